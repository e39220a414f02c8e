/* Flair's small Solana SDK for programs built with clang's upstream BPF target (see ../README.md).
 *
 * Types and syscalls with the C ABI Solana's runtime defines for programs (the layouts sol_invoke_signed_c reads),
 * the deserializer of the program's input (the aligned layout of the upgradeable BPF loader), and the little
 * helpers a freestanding program needs. Everything here is written for this project. */
#ifndef FLAIR_SOL_H
#define FLAIR_SOL_H

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef _Bool bool;
#define true 1
#define false 0

#define SUCCESS 0
#define PUBKEY_BYTES 32
#define MAX_ACCOUNTS 6            /* accounts an instruction may name; more are refused */
#define MAX_PERMITTED_DATA_INCREASE 10240
#define NON_DUP_MARKER 0xff

typedef struct {
  u8 x[PUBKEY_BYTES];
} SolPubkey;

/* What sol_invoke_signed_c reads for each account; the pointers point into the program's input. */
typedef struct {
  SolPubkey *key;
  u64 *lamports;
  u64 data_len;
  u8 *data;
  SolPubkey *owner;
  u64 rent_epoch;
  bool is_signer;
  bool is_writable;
  bool executable;
} SolAccountInfo;

typedef struct {
  SolPubkey *pubkey;
  bool is_writable;
  bool is_signer;
} SolAccountMeta;

typedef struct {
  SolPubkey *program_id;
  SolAccountMeta *accounts;
  u64 account_len;
  u8 *data;
  u64 data_len;
} SolInstruction;

typedef struct {
  const u8 *addr;
  u64 len;
} SolSignerSeed;

typedef struct {
  const SolSignerSeed *addr;
  u64 len;
} SolSignerSeeds;

/* The rent sysvar: the exemption threshold is an f64, kept here as its bits (no floating point in BPF). */
typedef struct {
  u64 lamports_per_byte_year;
  u64 exemption_threshold_bits;
  u8 burn_percent;
} SolRent;

typedef struct {
  SolAccountInfo ka[MAX_ACCOUNTS];
  u64 ka_num;
  const u8 *data;
  u64 data_len;
  const SolPubkey *program_id;
} SolParameters;

/* Syscalls: the loader resolves each name to its hash. */
extern void sol_log_(const char *message, u64 len);
extern u64 sol_try_find_program_address(const SolSignerSeed *seeds, u64 seeds_len, const SolPubkey *program_id,
                                        SolPubkey *address, u8 *bump);
extern u64 sol_create_program_address(const SolSignerSeed *seeds, u64 seeds_len, const SolPubkey *program_id,
                                      SolPubkey *address);
extern u64 sol_invoke_signed_c(const SolInstruction *instruction, const SolAccountInfo *account_infos,
                               u64 account_infos_len, const SolSignerSeeds *signers_seeds, u64 signers_seeds_len);
extern u64 sol_get_rent_sysvar(SolRent *rent);

/* clang may lower struct copies to these; the linker refuses calls to them unless the program defines them. */
void *memcpy(void *dst, const void *src, u64 n) {
  u8 *d = dst;
  const u8 *s = src;
  for (u64 i = 0; i < n; i++) d[i] = s[i];
  return dst;
}

void *memset(void *dst, int value, u64 n) {
  u8 *d = dst;
  for (u64 i = 0; i < n; i++) d[i] = (u8)value;
  return dst;
}

#define sol_log(literal) sol_log_((literal), sizeof(literal) - 1)

static bool bytes_eq(const u8 *a, const u8 *b, u64 n) {
  u8 diff = 0;
  for (u64 i = 0; i < n; i++) diff |= a[i] ^ b[i];
  return diff == 0;
}

static bool pubkey_eq(const SolPubkey *a, const SolPubkey *b) { return bytes_eq(a->x, b->x, PUBKEY_BYTES); }

/* Little-endian integers at any alignment (account data is packed, borsh-style). */
static u64 get_u64(const u8 *p) {
  u64 v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static u32 get_u32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static void put_u64(u8 *p, u64 v) {
  for (int i = 0; i < 8; i++) p[i] = (u8)(v >> (8 * i));
}

static void put_u32(u8 *p, u32 v) {
  for (int i = 0; i < 4; i++) p[i] = (u8)(v >> (8 * i));
}

/* The program's input, as the loader serialized it (aligned layout); false if it names too many accounts. */
static bool deserialize(u8 *input, SolParameters *params) {
  u64 count = *(u64 *)input;
  input += sizeof(u64);
  if (count > MAX_ACCOUNTS) return false;
  params->ka_num = count;
  for (u64 i = 0; i < count; i++) {
    u8 dup = *input++;
    SolAccountInfo *info = &params->ka[i];
    if (dup == NON_DUP_MARKER) {
      info->is_signer = *input++ != 0;
      info->is_writable = *input++ != 0;
      info->executable = *input++ != 0;
      input += 4; /* the original data length */
      info->key = (SolPubkey *)input;
      input += PUBKEY_BYTES;
      info->owner = (SolPubkey *)input;
      input += PUBKEY_BYTES;
      info->lamports = (u64 *)input;
      input += sizeof(u64);
      info->data_len = *(u64 *)input;
      input += sizeof(u64);
      info->data = input;
      input += info->data_len + MAX_PERMITTED_DATA_INCREASE;
      input = (u8 *)(((u64)input + 7) & ~(u64)7);
      info->rent_epoch = *(u64 *)input;
      input += sizeof(u64);
    } else {
      if (dup >= i) return false;
      *info = params->ka[dup];
      input += 7;
    }
  }
  params->data_len = *(u64 *)input;
  input += sizeof(u64);
  params->data = input;
  input += params->data_len;
  params->program_id = (SolPubkey *)input;
  return true;
}

/* After a CPI the runtime has rewritten an account's length in the input: read it back. */
static void refresh_data_len(SolAccountInfo *info) { info->data_len = *(u64 *)(info->data - sizeof(u64)); }

#endif
