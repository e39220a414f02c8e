/* flair_registry: per repository, its owner, policy hash and members; per branch, the head merged commit and its
 * round. Anchor-compatible (discriminators, borsh, framework error codes); the interface is in ../README.md.
 *
 * A repository's account is the PDA of ["repository", repo_id, genesis_owner], and create_repository derives it
 * from its signer: only the key that signs create_repository can create the account at the address of
 * (repo_id, that key). Flair's nodes look the account up with the owner named in the repository's genesis record
 * (whose hash is the repo_id), so whoever calls create_repository first for someone else's repository creates an
 * account at an address of its own that no node reads, and the real owner's creation still succeeds. */
#include "sol.h"

/* Anchor's framework error codes, and this program's own (from 6000). */
#define ERR_INSTRUCTION_MISSING 100
#define ERR_INSTRUCTION_FALLBACK_NOT_FOUND 101
#define ERR_INSTRUCTION_DID_NOT_DESERIALIZE 102
#define ERR_CONSTRAINT_MUT 2000
#define ERR_CONSTRAINT_SIGNER 2002
#define ERR_CONSTRAINT_SEEDS 2006
#define ERR_CONSTRAINT_ADDRESS 2012
#define ERR_ACCOUNT_DISCRIMINATOR_NOT_FOUND 3001
#define ERR_ACCOUNT_DISCRIMINATOR_MISMATCH 3002
#define ERR_ACCOUNT_NOT_ENOUGH_KEYS 3005
#define ERR_ACCOUNT_OWNED_BY_WRONG_PROGRAM 3007
#define ERR_INVALID_PROGRAM_ID 3008
#define ERR_ACCOUNT_NOT_INITIALIZED 3012
#define ERR_NOT_OWNER 6000
#define ERR_MAY_NOT_MOVE_BRANCH 6001
#define ERR_STALE_HEAD 6002
#define ERR_BAD_ROUND 6003
#define ERR_MEMBERS_FULL 6004
#define ERR_NOT_A_MEMBER 6005
#define ERR_INVALID_ROLE 6006
#define ERR_INVALID_BRANCH_NAME 6007
#define ERR_OWNER_IS_NOT_A_MEMBER 6008
#define ERR_ALREADY_IN_USE 6009
#define ERR_RENT_UNKNOWN 6010
#define ERR_SAME_OWNER 6011
#define ERR_INVALID_OWNER 6012

#define ROLE_CONTRIBUTOR 1
#define ROLE_MAINTAINER 2
#define MAX_MEMBERS 32
#define MAX_BRANCH_NAME 32

/* Repository: discriminator, repo_id, genesis_owner, owner, policy_hash, bump, member_count, members[32] {key,
 * role}. genesis_owner is the key that created it (a seed of its address) and never changes; owner moves with
 * set_owner. */
#define REPO_REPO_ID 8
#define REPO_GENESIS_OWNER 40
#define REPO_OWNER 72
#define REPO_POLICY 104
#define REPO_BUMP 136
#define REPO_MEMBER_COUNT 137
#define REPO_MEMBERS 138
#define MEMBER_SIZE 33
#define REPO_SIZE (REPO_MEMBERS + MAX_MEMBERS * MEMBER_SIZE)

/* Branch: discriminator, repository, name_len, name[32], head, round, merges, last_author, bump. */
#define BRANCH_REPOSITORY 8
#define BRANCH_NAME_LEN 40
#define BRANCH_NAME 41
#define BRANCH_HEAD 73
#define BRANCH_ROUND 105
#define BRANCH_MERGES 113
#define BRANCH_LAST_AUTHOR 121
#define BRANCH_BUMP 153
#define BRANCH_SIZE 154

/* sha256("account:<Name>")[:8] and sha256("global:<instruction>")[:8], as Anchor computes them. */
static const u8 DISC_REPOSITORY[8] = {0x64, 0x82, 0x5c, 0x27, 0xfa, 0xcb, 0x7e, 0xaa};
static const u8 DISC_BRANCH[8] = {0x0e, 0x3f, 0x64, 0x32, 0x19, 0x08, 0x1d, 0x05};
static const u8 IX_CREATE_REPOSITORY[8] = {0xf1, 0x83, 0xce, 0xbb, 0x02, 0x79, 0xdf, 0xfd};
static const u8 IX_SET_POLICY[8] = {0x28, 0x85, 0x0c, 0x9d, 0xeb, 0xca, 0x02, 0x84};
static const u8 IX_ADD_MEMBER[8] = {0x0d, 0x74, 0x7b, 0x82, 0x7e, 0xc6, 0x39, 0x22};
static const u8 IX_REMOVE_MEMBER[8] = {0xab, 0x39, 0xe7, 0x96, 0xa7, 0x80, 0x12, 0x37};
static const u8 IX_RECORD_MERGE[8] = {0x81, 0xb4, 0x05, 0xb8, 0x54, 0xda, 0xd2, 0x4f};
static const u8 IX_SET_OWNER[8] = {0x48, 0xca, 0x78, 0x34, 0x4d, 0x80, 0x60, 0xc5};

static const u8 SEED_REPOSITORY[] = "repository";
static const u8 SEED_BRANCH[] = "branch";
static const u8 PROTECTED_BRANCH[] = "main";
static const SolPubkey SYSTEM_PROGRAM = {{0}};
#define TWO_F64_BITS 0x4000000000000000ULL /* 2.0: the exemption threshold every cluster uses */

static u64 fail(u64 code, const char *why, u64 len) {
  sol_log_(why, len);
  return code;
}
#define FAIL(code, literal) fail((code), (literal), sizeof(literal) - 1)

/* -- account checks -------------------------------------------------------------------------------------- */

static u64 require_signer(const SolAccountInfo *info) {
  return info->is_signer ? SUCCESS : FAIL(ERR_CONSTRAINT_SIGNER, "a required signature is missing");
}

static u64 require_writable(const SolAccountInfo *info) {
  return info->is_writable ? SUCCESS : FAIL(ERR_CONSTRAINT_MUT, "an account that changes is not writable");
}

static u64 require_system_program(const SolAccountInfo *info) {
  return pubkey_eq(info->key, &SYSTEM_PROGRAM) ? SUCCESS
                                                : FAIL(ERR_INVALID_PROGRAM_ID, "not the System Program");
}

/* An account of this program holding a `kind` record of at least `size` bytes. */
static u64 require_record(const SolParameters *params, const SolAccountInfo *info, const u8 *kind, u64 size) {
  if (pubkey_eq(info->owner, &SYSTEM_PROGRAM) && info->data_len == 0)
    return FAIL(ERR_ACCOUNT_NOT_INITIALIZED, "the account is not initialized");
  if (!pubkey_eq(info->owner, params->program_id))
    return FAIL(ERR_ACCOUNT_OWNED_BY_WRONG_PROGRAM, "the account is owned by another program");
  if (info->data_len < 8) return FAIL(ERR_ACCOUNT_DISCRIMINATOR_NOT_FOUND, "the account has no discriminator");
  if (!bytes_eq(info->data, kind, 8))
    return FAIL(ERR_ACCOUNT_DISCRIMINATOR_MISMATCH, "the account holds another kind of record");
  if (info->data_len < size) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "the account is too short");
  return SUCCESS;
}

/* The repository account: this program's, a Repository, at the address its repo_id, genesis_owner and bump
 * give. */
static u64 require_repository(const SolParameters *params, const SolAccountInfo *info) {
  u64 err = require_record(params, info, DISC_REPOSITORY, REPO_SIZE);
  if (err) return err;
  const u8 *bump = info->data + REPO_BUMP;
  SolSignerSeed seeds[4] = {{SEED_REPOSITORY, sizeof(SEED_REPOSITORY) - 1},
                            {info->data + REPO_REPO_ID, PUBKEY_BYTES},
                            {info->data + REPO_GENESIS_OWNER, PUBKEY_BYTES},
                            {bump, 1}};
  SolPubkey expected;
  if (sol_create_program_address(seeds, 4, params->program_id, &expected) != SUCCESS ||
      !pubkey_eq(&expected, info->key))
    return FAIL(ERR_CONSTRAINT_SEEDS, "the repository is not at its program address");
  return SUCCESS;
}

static u64 require_owner(const SolAccountInfo *repository, const SolAccountInfo *owner) {
  u64 err = require_signer(owner);
  if (err) return err;
  return bytes_eq(repository->data + REPO_OWNER, owner->key->x, PUBKEY_BYTES)
             ? SUCCESS
             : FAIL(ERR_NOT_OWNER, "only the repository's owner may do this");
}

/* -- creating a program account ---------------------------------------------------------------------------- */

static u64 rent_exempt(u64 size, u64 *lamports) {
  SolRent rent;
  if (sol_get_rent_sysvar(&rent) != SUCCESS || rent.exemption_threshold_bits != TWO_F64_BITS)
    return FAIL(ERR_RENT_UNKNOWN, "the rent sysvar is not the two-year exemption");
  *lamports = (128 + size) * rent.lamports_per_byte_year * 2;
  return SUCCESS;
}

/* The accounts and signer of one System Program call (BPF calls take at most five arguments). */
typedef struct {
  SolAccountMeta *metas;
  u64 metas_len;
  const SolSignerSeeds *signer;
} SystemCall;

static u64 system_call(SolParameters *params, const u8 *data, u64 data_len, const SystemCall *call) {
  SolInstruction instruction = {(SolPubkey *)&SYSTEM_PROGRAM, call->metas, call->metas_len, (u8 *)data, data_len};
  return sol_invoke_signed_c(&instruction, params->ka, params->ka_num, call->signer, call->signer ? 1 : 0);
}

/* Make `account` (the PDA `signer` signs for) a rent-exempt account of this program of `size` bytes, paid by
 * `payer`; an account that already holds lamports (anyone may send some) is topped up, allocated and assigned. */
static u64 create_program_account(SolParameters *params, SolAccountInfo *payer, SolAccountInfo *account, u64 size,
                                  const SolSignerSeeds *signer) {
  if (!pubkey_eq(account->owner, &SYSTEM_PROGRAM) || account->data_len != 0)
    return FAIL(ERR_ALREADY_IN_USE, "the account is in use already");
  u64 needed, err = rent_exempt(size, &needed);
  if (err) return err;
  SolAccountMeta both[2] = {{payer->key, true, true}, {account->key, true, true}};
  u8 data[52];
  if (*account->lamports == 0) {
    put_u32(data, 0); /* CreateAccount { lamports, space, owner } */
    put_u64(data + 4, needed);
    put_u64(data + 12, size);
    memcpy(data + 20, params->program_id, PUBKEY_BYTES);
    SystemCall create = {both, 2, signer};
    err = system_call(params, data, 52, &create);
  } else {
    if (*account->lamports < needed) {
      SolAccountMeta paid[2] = {{payer->key, true, true}, {account->key, true, false}};
      SystemCall transfer = {paid, 2, 0};
      put_u32(data, 2); /* Transfer { lamports } */
      put_u64(data + 4, needed - *account->lamports);
      err = system_call(params, data, 12, &transfer);
      if (err) return err;
    }
    SolAccountMeta self[1] = {{account->key, true, true}};
    SystemCall own = {self, 1, signer};
    put_u32(data, 8); /* Allocate { space } */
    put_u64(data + 4, size);
    err = system_call(params, data, 12, &own);
    if (err) return err;
    put_u32(data, 1); /* Assign { owner } */
    memcpy(data + 4, params->program_id, PUBKEY_BYTES);
    err = system_call(params, data, 36, &own);
  }
  if (err) return err;
  refresh_data_len(account);
  return SUCCESS;
}

/* -- instructions ------------------------------------------------------------------------------------------ */

/* create_repository(repo_id: [u8; 32], policy_hash: [u8; 32]): repository (mut), owner (signer, mut), system.
 * The repository is the PDA of ["repository", repo_id, owner]: the signer is its genesis owner, and a signer
 * creating an account for someone else's repository id creates one at its own address, which Flair's nodes never
 * read (they derive the address from the owner the repository's genesis record names). */
static u64 create_repository(SolParameters *params, const u8 *args, u64 args_len) {
  if (params->ka_num < 3) return FAIL(ERR_ACCOUNT_NOT_ENOUGH_KEYS, "create_repository takes 3 accounts");
  if (args_len != 64) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "create_repository takes 64 bytes");
  SolAccountInfo *repository = &params->ka[0], *owner = &params->ka[1];
  u64 err;
  if ((err = require_writable(repository)) || (err = require_signer(owner)) || (err = require_writable(owner)) ||
      (err = require_system_program(&params->ka[2])))
    return err;
  u8 bump;
  SolSignerSeed seeds[4] = {{SEED_REPOSITORY, sizeof(SEED_REPOSITORY) - 1},
                            {args, PUBKEY_BYTES},
                            {owner->key->x, PUBKEY_BYTES},
                            {&bump, 1}};
  SolPubkey expected;
  if (sol_try_find_program_address(seeds, 3, params->program_id, &expected, &bump) != SUCCESS ||
      !pubkey_eq(&expected, repository->key))
    return FAIL(ERR_CONSTRAINT_SEEDS, "the repository is not at the program address of its id and its signer");
  SolSignerSeeds signer = {seeds, 4};
  if ((err = create_program_account(params, owner, repository, REPO_SIZE, &signer))) return err;
  u8 *data = repository->data;
  memcpy(data, DISC_REPOSITORY, 8);
  memcpy(data + REPO_REPO_ID, args, PUBKEY_BYTES);
  memcpy(data + REPO_GENESIS_OWNER, owner->key, PUBKEY_BYTES);
  memcpy(data + REPO_OWNER, owner->key, PUBKEY_BYTES);
  memcpy(data + REPO_POLICY, args + PUBKEY_BYTES, PUBKEY_BYTES);
  data[REPO_BUMP] = bump;
  data[REPO_MEMBER_COUNT] = 0;
  return SUCCESS;
}

/* The first two accounts of the owner's instructions: repository (mut), owner (signer). */
static u64 owner_accounts(const SolParameters *params) {
  if (params->ka_num < 2) return FAIL(ERR_ACCOUNT_NOT_ENOUGH_KEYS, "the instruction takes 2 accounts");
  u64 err;
  if ((err = require_repository(params, &params->ka[0])) || (err = require_writable(&params->ka[0])))
    return err;
  return require_owner(&params->ka[0], &params->ka[1]);
}

/* set_policy(policy_hash: [u8; 32]) */
static u64 set_policy(SolParameters *params, const u8 *args, u64 args_len) {
  if (args_len != 32) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "set_policy takes 32 bytes");
  u64 err = owner_accounts(params);
  if (err) return err;
  memcpy(params->ka[0].data + REPO_POLICY, args, PUBKEY_BYTES);
  return SUCCESS;
}

/* The index of `key` among the repository's members, or MAX_MEMBERS. */
static u64 find_member(const u8 *data, const u8 *key) {
  u64 count = data[REPO_MEMBER_COUNT];
  for (u64 i = 0; i < count && i < MAX_MEMBERS; i++)
    if (bytes_eq(data + REPO_MEMBERS + i * MEMBER_SIZE, key, PUBKEY_BYTES)) return i;
  return MAX_MEMBERS;
}

/* add_member(member: Pubkey, role: u8): a new member, or a member's new role. */
static u64 add_member(SolParameters *params, const u8 *args, u64 args_len) {
  if (args_len != 33) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "add_member takes 33 bytes");
  u64 err = owner_accounts(params);
  if (err) return err;
  u8 *data = params->ka[0].data, role = args[PUBKEY_BYTES];
  if (role > ROLE_MAINTAINER) return FAIL(ERR_INVALID_ROLE, "roles are 0 reader, 1 contributor, 2 maintainer");
  if (bytes_eq(args, data + REPO_OWNER, PUBKEY_BYTES))
    return FAIL(ERR_OWNER_IS_NOT_A_MEMBER, "the owner is not a member with a role");
  u64 at = find_member(data, args);
  if (at == MAX_MEMBERS) {
    at = data[REPO_MEMBER_COUNT];
    if (at >= MAX_MEMBERS) return FAIL(ERR_MEMBERS_FULL, "the repository has 32 members");
    memcpy(data + REPO_MEMBERS + at * MEMBER_SIZE, args, PUBKEY_BYTES);
    data[REPO_MEMBER_COUNT] = (u8)(at + 1);
  }
  data[REPO_MEMBERS + at * MEMBER_SIZE + PUBKEY_BYTES] = role;
  return SUCCESS;
}

/* Take the member at `at` out of the list: the last member takes its place, the freed last slot is zeroed. */
static void drop_member(u8 *data, u64 at) {
  u64 last = (u64)data[REPO_MEMBER_COUNT] - 1;
  if (at != last)
    memcpy(data + REPO_MEMBERS + at * MEMBER_SIZE, data + REPO_MEMBERS + last * MEMBER_SIZE, MEMBER_SIZE);
  memset(data + REPO_MEMBERS + last * MEMBER_SIZE, 0, MEMBER_SIZE);
  data[REPO_MEMBER_COUNT] = (u8)last;
}

/* remove_member(member: Pubkey): the last member takes the removed one's place. */
static u64 remove_member(SolParameters *params, const u8 *args, u64 args_len) {
  if (args_len != 32) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "remove_member takes 32 bytes");
  u64 err = owner_accounts(params);
  if (err) return err;
  u8 *data = params->ka[0].data;
  if (bytes_eq(args, data + REPO_OWNER, PUBKEY_BYTES))
    return FAIL(ERR_OWNER_IS_NOT_A_MEMBER, "the owner is not a member with a role");
  u64 at = find_member(data, args);
  if (at == MAX_MEMBERS) return FAIL(ERR_NOT_A_MEMBER, "not a member of the repository");
  drop_member(data, at);
  return SUCCESS;
}

/* set_owner(new_owner: Pubkey): the repository passes to new_owner, who leaves the members if it was one (the
 * owner is not a member with a role). */
static u64 set_owner(SolParameters *params, const u8 *args, u64 args_len) {
  if (args_len != 32) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "set_owner takes 32 bytes");
  u64 err = owner_accounts(params);
  if (err) return err;
  u8 *data = params->ka[0].data;
  if (bytes_eq(args, SYSTEM_PROGRAM.x, PUBKEY_BYTES)) /* the System Program's id, not a key anyone holds */
    return FAIL(ERR_INVALID_OWNER, "the new owner is the all-zero key");
  if (bytes_eq(args, data + REPO_OWNER, PUBKEY_BYTES))
    return FAIL(ERR_SAME_OWNER, "the new owner is the owner already");
  u64 at = find_member(data, args);
  if (at != MAX_MEMBERS) drop_member(data, at);
  memcpy(data + REPO_OWNER, args, PUBKEY_BYTES);
  return SUCCESS;
}

/* record_merge(branch: String, previous: [u8; 32], commit: [u8; 32], round: u64): repository, branch (mut),
 * authority (signer, mut), system_program. */
static u64 record_merge(SolParameters *params, const u8 *args, u64 args_len) {
  if (params->ka_num < 4) return FAIL(ERR_ACCOUNT_NOT_ENOUGH_KEYS, "record_merge takes 4 accounts");
  if (args_len < 4) return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "record_merge's arguments are cut short");
  u64 name_len = get_u32(args);
  if (args_len != 4 + name_len + 72)
    return FAIL(ERR_INSTRUCTION_DID_NOT_DESERIALIZE, "record_merge's arguments have the wrong length");
  if (name_len == 0 || name_len > MAX_BRANCH_NAME)
    return FAIL(ERR_INVALID_BRANCH_NAME, "a branch name is 1 to 32 bytes");
  const u8 *name = args + 4, *previous = name + name_len, *commit = previous + 32;
  u64 round = get_u64(commit + 32);
  SolAccountInfo *repository = &params->ka[0], *branch = &params->ka[1], *authority = &params->ka[2];
  u64 err;
  if ((err = require_repository(params, repository)) || (err = require_writable(branch)) ||
      (err = require_signer(authority)) || (err = require_writable(authority)) ||
      (err = require_system_program(&params->ka[3])))
    return err;
  /* Who may move the branch, as Flair's nodes rule (core.membership): main is protected (owner or maintainer),
   * any other branch takes a contributor or more. The round's elected aggregator is always such a member. */
  const u8 *repo = repository->data;
  if (!bytes_eq(authority->key->x, repo + REPO_OWNER, PUBKEY_BYTES)) {
    u8 least = name_len == sizeof(PROTECTED_BRANCH) - 1 && bytes_eq(name, PROTECTED_BRANCH, name_len)
                   ? ROLE_MAINTAINER
                   : ROLE_CONTRIBUTOR;
    u64 at = find_member(repo, authority->key->x);
    if (at == MAX_MEMBERS || repo[REPO_MEMBERS + at * MEMBER_SIZE + PUBKEY_BYTES] < least)
      return FAIL(ERR_MAY_NOT_MOVE_BRANCH, "the signer may not move this branch");
  }
  u8 bump;
  SolSignerSeed seeds[4] = {{SEED_BRANCH, sizeof(SEED_BRANCH) - 1},
                            {repository->key->x, PUBKEY_BYTES},
                            {name, name_len},
                            {&bump, 1}};
  SolPubkey expected;
  if (sol_try_find_program_address(seeds, 3, params->program_id, &expected, &bump) != SUCCESS ||
      !pubkey_eq(&expected, branch->key))
    return FAIL(ERR_CONSTRAINT_SEEDS, "the branch is not at the program address of its repository and name");
  u8 *data;
  if (pubkey_eq(branch->owner, &SYSTEM_PROGRAM) && branch->data_len == 0) {
    if (round == 0) return FAIL(ERR_BAD_ROUND, "rounds start at 1");
    SolSignerSeeds signer = {seeds, 4};
    if ((err = create_program_account(params, authority, branch, BRANCH_SIZE, &signer))) return err;
    data = branch->data;
    memcpy(data, DISC_BRANCH, 8);
    memcpy(data + BRANCH_REPOSITORY, repository->key, PUBKEY_BYTES);
    data[BRANCH_NAME_LEN] = (u8)name_len;
    memcpy(data + BRANCH_NAME, name, name_len);
    data[BRANCH_BUMP] = bump;
    put_u64(data + BRANCH_MERGES, 1);
  } else {
    if ((err = require_record(params, branch, DISC_BRANCH, BRANCH_SIZE))) return err;
    data = branch->data;
    if (!bytes_eq(data + BRANCH_REPOSITORY, repository->key->x, PUBKEY_BYTES))
      return FAIL(ERR_CONSTRAINT_ADDRESS, "the branch belongs to another repository");
    if (!bytes_eq(data + BRANCH_HEAD, previous, 32))
      return FAIL(ERR_STALE_HEAD, "the merge does not extend the branch's head");
    u64 stored = get_u64(data + BRANCH_ROUND), merges = get_u64(data + BRANCH_MERGES);
    if (stored == ~0ULL || round != stored + 1 || merges == ~0ULL)
      return FAIL(ERR_BAD_ROUND, "the merge is not the branch's next round");
    put_u64(data + BRANCH_MERGES, merges + 1);
  }
  memcpy(data + BRANCH_HEAD, commit, 32);
  put_u64(data + BRANCH_ROUND, round);
  memcpy(data + BRANCH_LAST_AUTHOR, authority->key, PUBKEY_BYTES);
  return SUCCESS;
}

u64 entrypoint(u8 *input) {
  SolParameters params;
  if (!deserialize(input, &params)) return FAIL(ERR_ACCOUNT_NOT_ENOUGH_KEYS, "too many accounts");
  if (params.data_len < 8) return FAIL(ERR_INSTRUCTION_MISSING, "no instruction discriminator");
  const u8 *args = params.data + 8;
  u64 args_len = params.data_len - 8;
  if (bytes_eq(params.data, IX_CREATE_REPOSITORY, 8)) return create_repository(&params, args, args_len);
  if (bytes_eq(params.data, IX_SET_POLICY, 8)) return set_policy(&params, args, args_len);
  if (bytes_eq(params.data, IX_ADD_MEMBER, 8)) return add_member(&params, args, args_len);
  if (bytes_eq(params.data, IX_REMOVE_MEMBER, 8)) return remove_member(&params, args, args_len);
  if (bytes_eq(params.data, IX_RECORD_MERGE, 8)) return record_merge(&params, args, args_len);
  if (bytes_eq(params.data, IX_SET_OWNER, 8)) return set_owner(&params, args, args_len);
  return FAIL(ERR_INSTRUCTION_FALLBACK_NOT_FOUND, "unknown instruction");
}
