/* tm_crypto.h: see docs/dev/replication-interfaces.md */
#ifndef TM_CRYPTO_H
#define TM_CRYPTO_H
#endif
