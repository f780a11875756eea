#include "mixpa/version.h"

namespace mixpa {

const char* version() noexcept { return MIXPA_VERSION_STRING; }

}  // namespace mixpa
