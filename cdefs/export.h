/*
 * export.h - BS_EXPORT, for the shim's functions that must stay visible outside the library
 * (Python calls them through cffi; C hosts link them). C only: cffi never reads this file.
 */
#ifndef BS_EXPORT_H
#define BS_EXPORT_H

#define BS_EXPORT __attribute__((visibility("default")))

#endif
