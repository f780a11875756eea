# Every SIMD kernel object of the library contains prefetch instructions (ctest
# KernelObjects.ContainPrefetches). GCC once deleted every non-inlined call of a helper whose
# only effect was __builtin_prefetch (to ipa-pure-const it is "const"), and the kernels ran with
# no software prefetch at all while their comments quoted its measurements; nothing failed.
# Usage: cmake -DOBJDUMP=<objdump> -DOBJECTS=<a;b;..> -P kernel_prefetch.cmake
if(NOT OBJDUMP OR NOT EXISTS "${OBJDUMP}")
  message(FATAL_ERROR "kernel_prefetch: objdump not found (OBJDUMP='${OBJDUMP}')")
endif()
set(checked 0)
foreach(object IN LISTS OBJECTS)
  get_filename_component(name "${object}" NAME)
  # The SIMD flavours' kernels; kernel_scalar prefetches nothing by design.
  if(NOT name MATCHES "^kernel_(avx2|avx512|amx)[a-z0-9_]*\\.cpp\\.o$")
    continue()
  endif()
  execute_process(COMMAND "${OBJDUMP}" -d --no-show-raw-insn "${object}" OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "kernel_prefetch: ${OBJDUMP} -d ${object} failed (${rc})")
  endif()
  string(REGEX MATCHALL "\tprefetch(t0|t1|t2|nta)[ \t]" found "${listing}")
  list(LENGTH found count)
  message(STATUS "${name}: ${count} prefetch instructions")
  if(count EQUAL 0)
    message(SEND_ERROR "kernel_prefetch: ${name} contains no prefetch instruction (were its prefetch calls deleted?)")
  endif()
  math(EXPR checked "${checked} + 1")
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "kernel_prefetch: no SIMD kernel object among '${OBJECTS}'")
endif()
