/* tm_tls.h: see docs/dev/replication-interfaces.md */
#ifndef TM_TLS_H
#define TM_TLS_H
#endif
