/* io_uring glue for the chunk reader: declarations added with uring.c. */
#ifndef TM_URING_H
#define TM_URING_H
#endif
