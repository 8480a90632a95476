package etcdstore

import (
	"crypto/sha256"
	"encoding/base64"

	"github.com/alexedwards/scs/v2"
)

// StoreToken returns token, a session token as the app has it
// (sm.Token(ctx)), as sm hands it to its store: with
// sm.HashTokenInStore, the base64url encoding (no padding) of its SHA-256
// digest, as SCS computes it (scs v2.9.0, data.go, hashToken); else token
// itself. Pass what it returns wherever the store takes or gives a token
// outside SCS: the except tokens of DeleteByPrincipal, the keys of the
// maps of FindByPrincipal and AllCtx.
//
// With HashTokenInStore, etcd holds only the digests, so whoever reads
// etcd, a snapshot or a backup cannot send a live session's token back
// as a cookie (README, Security). It is safe for concurrent use.
func StoreToken(sm *scs.SessionManager, token string) string {
	if sm == nil || !sm.HashTokenInStore {
		return token
	}
	return hashToken(token)
}

// hashToken is SCS's digest of a token under HashTokenInStore.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
