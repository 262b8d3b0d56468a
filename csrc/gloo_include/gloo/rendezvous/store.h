#pragma once
#include "../../../gloo_decls.h"
