package etcdstore

import clientv3 "go.etcd.io/etcd/client/v3"

// MaxTokenLen is the longest session token, in bytes, that the store
// accepts. SCS tokens are 43 bytes (base64url of 32 random bytes, or of a
// SHA-256 hash with HashTokenInStore), so the bound leaves room for custom
// token schemes while keeping keys small. Find and Delete treat a longer
// token as absent without asking etcd; Commit rejects it. The empty token
// is a token like any other, whose key is the prefix itself, as in SCS's
// memstore and the store this one replaces.
const MaxTokenLen = 256

// validToken reports whether token can name a session: no longer than
// MaxTokenLen. Any bytes are allowed, since the key is always
// prefix+token and so never leaves the prefix range.
func validToken(token string) bool {
	return len(token) <= MaxTokenLen
}

// keyFor maps a token to its etcd key.
func keyFor(prefix, token string) string {
	return prefix + token
}

// tokenFor maps a key read under prefix back to its token. The caller
// guarantees that key begins with prefix, as every key in a range read of
// [prefix, rangeEnd(prefix)) does.
func tokenFor(prefix string, key []byte) string {
	return string(key[len(prefix):])
}

// rangeEnd returns the end of the key range that holds exactly the keys
// beginning with prefix: the range is [prefix, rangeEnd(prefix)).
func rangeEnd(prefix string) string {
	return clientv3.GetPrefixRangeEnd(prefix)
}

// nextKey returns the smallest key greater than key, where a paged range
// read resumes.
func nextKey(key []byte) string {
	return string(key) + "\x00"
}
