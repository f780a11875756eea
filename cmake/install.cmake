# Install rules (MIXPA_INSTALL, on for the top-level project): the static library, its public
# headers, a CMake package (find_package(mixpa) -> mixpa::mixpa), mixpa.pc and the CLI.
#
#   cmake --install build --prefix /opt/mixpa
#   find_package(mixpa 0.1 CONFIG REQUIRED)  +  CMAKE_PREFIX_PATH=/opt/mixpa
#   pkg-config --cflags --libs mixpa         +  PKG_CONFIG_PATH=/opt/mixpa/lib/pkgconfig
include(CMakePackageConfigHelpers)

set(mixpa_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/mixpa)
set(mixpa_export_targets mixpa_lib)
set(MIXPA_PACKAGE_HAS_CUDA OFF)
if(TARGET mixpa_cuda_kernels)  # the cuda executor was built: its kernels and cudart go along
  set(MIXPA_PACKAGE_HAS_CUDA ON)
  set_target_properties(mixpa_cuda_kernels PROPERTIES EXPORT_NAME cuda_kernels)
  list(APPEND mixpa_export_targets mixpa_cuda_kernels)
endif()

install(TARGETS ${mixpa_export_targets} EXPORT mixpaTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT mixpa_development)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/mixpa ${PROJECT_BINARY_DIR}/include/mixpa
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT mixpa_development)
install(EXPORT mixpaTargets NAMESPACE mixpa:: DESTINATION ${mixpa_cmake_dir} COMPONENT mixpa_development)

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/mixpaConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/cmake/mixpaConfig.cmake INSTALL_DESTINATION ${mixpa_cmake_dir})
# 0.x: a minor version may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/mixpaConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cmake/mixpaConfig.cmake ${PROJECT_BINARY_DIR}/cmake/mixpaConfigVersion.cmake
        DESTINATION ${mixpa_cmake_dir} COMPONENT mixpa_development)

# pkg-config: static library, so everything it needs is in Libs. The prefix is found from the
# .pc file's own place (${pcfiledir}), so `cmake --install --prefix` anywhere gives a working file.
file(RELATIVE_PATH mixpa_pc_prefix /root/${CMAKE_INSTALL_LIBDIR}/pkgconfig /root)
string(REGEX REPLACE "/$" "" mixpa_pc_prefix "${mixpa_pc_prefix}")
set(MIXPA_PC_LIBS "-lmixpa")
if(MIXPA_PACKAGE_HAS_CUDA)
  find_package(CUDAToolkit REQUIRED QUIET)  # its variables live in src/cuda's scope
  string(APPEND MIXPA_PC_LIBS " -lmixpa_cuda_kernels -L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -ldl -lrt")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/mixpa.pc.in ${PROJECT_BINARY_DIR}/mixpa.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mixpa.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT mixpa_development)

if(TARGET mixpa)  # the CLI
  install(TARGETS mixpa RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT mixpa_runtime)
endif()
