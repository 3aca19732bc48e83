/* Shared by coopy's native helpers: nothing yet beyond the common includes. */
#ifndef COOPY_COMMON_H
#define COOPY_COMMON_H
#define _GNU_SOURCE
#endif
