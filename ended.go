package etcdstore

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Why a session ended.
//
// Every end of a session leaves a tombstone at its key for the store's
// request bound (WithMaxRequestDuration, 5 minutes by default), and the
// tombstone says why and when (envelope.go): a request whose session is
// gone can ask Ended, and tell its user "you were signed out because you
// signed in on another device". The tombstone holds a reason and a time
// only, in the clear: nothing of the session's data, and its key is the
// store's token (a digest, with HashTokenInStore).

// EndReason is why a session ended.
type EndReason uint8

const (
	// EndUnknown: a tombstone left by an earlier release, which kept no
	// reason.
	EndUnknown EndReason = iota
	// EndLogout: Delete (SCS's Destroy, RenewToken's old token).
	EndLogout
	// EndLogoutEverywhere: DeleteByPrincipal.
	EndLogoutEverywhere
	// EndSessionLimit: a commit of another session of the principal, under
	// WithSessionLimit's EndOldest.
	EndSessionLimit
	// EndExpired: the session's expiry passed; or a commit asked for an
	// expiry that had passed, which ends the session as well.
	EndExpired
	// EndRevoked: ended by an operator, for every session at once (EndAll,
	// the etcdstore command's logout -all).
	EndRevoked

	endReasons = EndRevoked // the last
)

// String returns the reason in words: "logged out", "logged out
// everywhere", "ended by the session limit", "expired", "revoked", or "unknown".
func (r EndReason) String() string {
	switch r {
	case EndLogout:
		return "logged out"
	case EndLogoutEverywhere:
		return "logged out everywhere"
	case EndSessionLimit:
		return "ended by the session limit"
	case EndExpired:
		return "expired"
	case EndRevoked:
		return "revoked"
	}
	return "unknown"
}

// Ending is why and when a session ended.
type Ending struct {
	Reason EndReason
	// At is when the session ended: when its tombstone was written, by the
	// clock of the app server that wrote it, or for EndExpired read from a
	// stored session, its expiry. It is the zero time for EndUnknown.
	At time.Time
}

// Ended reports why and when the session token ended, and true, while
// etcd still holds its tombstone or its expired value: for the store's
// request bound (WithMaxRequestDuration) after a logout or any other end,
// and for a session that simply expired, until its lease ends (up to a
// bucket width later, see Lease reuse). It reports false, and a zero
// Ending, for a live session, and for a token of which etcd holds
// nothing: one never committed, or ended too long ago to say.
//
// token is the store's: with HashTokenInStore, pass StoreToken(sm,
// token), where token is the one the request's cookie carried (the
// session SCS loaded for it is new, and sm.Token(ctx) is not it). It
// makes one linearizable read, within the store's timeout. Errors are
// those of the etcd request and ErrClientClosed. It is safe for concurrent use.
func (s *EtcdStore) Ended(ctx context.Context, token string) (Ending, bool, error) {
	mustContext(ctx, "Ended")
	if !validToken(token) {
		return Ending{}, false, nil
	}
	if err := clientErr(s.client); err != nil {
		return Ending{}, false, fmt.Errorf("etcdstore: ended: %w", err)
	}
	resp, err := retryValue(s.calls, s.calls.newCall(ctx), func(ctx context.Context) (*clientv3.GetResponse, error) {
		return s.client.Get(ctx, s.keys.key(token))
	})
	if err != nil {
		return Ending{}, false, fmt.Errorf("etcdstore: ended: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Ending{}, false, nil
	}
	value := resp.Kvs[0].Value
	if isTombstone(value) {
		r, at := tombstoneReason(value)
		return Ending{Reason: r, At: at}, true, nil
	}
	// Sealed or not, an envelope's expiry is in the clear.
	if expiry, ok := envelopeExpiry(value); ok && !s.now().Before(expiry) {
		return Ending{Reason: EndExpired, At: expiry}, true, nil
	}
	return Ending{}, false, nil
}
