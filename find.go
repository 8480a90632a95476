package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A Find, top to bottom: FindCtx reads what etcd holds for the token (get:
// from the read cache, cache.go, when it can serve the read, else one
// linearizable Get), decodes it and checks its expiry (liveValue; a
// legacy value's lease with legacyLive), and records what it saw, which
// the request's commit is made against (tokens.go, commit.go).

// FindCtx returns the data of the session token and true, or false with
// a nil error when there is no such session, it has expired, or the token
// is longer than MaxTokenLen (no request is made for it). It reads
// linearizably: a session committed through any member is seen. It waits
// for etcd no longer than the store's timeout (WithTimeout), trying again
// meanwhile after a leader change or a lost connection. Errors are those
// of the etcd request, wrapping context.DeadlineExceeded when the deadline
// passed, ErrClientClosed, and an error for a stored value that bears
// this store's envelope but does not decode.
func (s *EtcdStore) FindCtx(ctx context.Context, token string) (data []byte, found bool, err error) {
	mustContext(ctx, "FindCtx")
	defer s.stats.begin(&s.stats.finds, &s.stats.latency.find).end(&err)
	if !validToken(token) {
		return nil, false, nil
	}
	if err := clientErr(s.client); err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	c := s.calls.newCall(ctx)
	kv, present, rev, err := s.get(c, token)
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	if !present || isTombstone(kv.value) {
		s.tokens.recordGone(token, rev)
		return nil, false, nil
	}
	data, expiry, live, err := s.liveValue(c, s.keys.key(token), kv, s.now(), nil)
	if errors.Is(err, errCorrupt) {
		return nil, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("etcdstore: find: %w", err)
	}
	seen := tokenState{rev: kv.mod, stored: true, expiry: expiry}
	if !live {
		// Stored, though expired: a request in flight that loaded it
		// before may still commit it.
		s.tokens.record(token, seen)
		return nil, false, nil
	}
	if s.touch > 0 {
		seen.data, seen.hasData = string(data), true
	}
	if s.index != nil {
		last, known := s.tokens.last(token)
		seen.principal, _, seen.digests = s.index.of(last, known, data)
		seen.principalKnown, seen.sealedBy = true, sealedBy(kv.value)
	}
	s.tokens.record(token, seen)
	return data, true, nil
}

// storedKV is a session as etcd holds it: its stored value (the
// envelope), its lease and its key's mod revision.
type storedKV struct {
	value []byte
	lease int64
	mod   int64
}

// kvOf is the storedKV of a key-value read from etcd.
func kvOf(kv *mvccpb.KeyValue) storedKV {
	return storedKV{value: kv.Value, lease: kv.Lease, mod: kv.ModRevision}
}

// get reads what etcd holds for token within c, from the read cache when
// it can serve the read (WithReadCache), and the revision it read at.
func (s *EtcdStore) get(c call, token string) (kv storedKV, present bool, rev int64, err error) {
	if s.cache != nil && s.cache.read(c, func(values map[string]storedKV, r int64) {
		kv, present = values[token]
		rev = r
	}) {
		return kv, present, rev, nil
	}
	key := s.keys.key(token)
	if s.batches != nil {
		// In the next batch of reads (batch.go); should the batch fail as
		// a whole, the read is made again alone.
		r, err := s.batches.reads.do(&batchItem[readResult]{c: c, key: key, size: len(key), op: clientv3.OpGet(key)})
		if err == nil || !c.alive() {
			return r.kv, r.present, r.rev, err
		}
		if retryable(err) {
			s.calls.retries.Add(1)
		}
	}
	resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.GetResponse, error) {
		return s.client.Get(ctx, key)
	})
	if err != nil {
		return storedKV{}, false, 0, err
	}
	r := readOf(resp.Kvs, resp.Header.Revision)
	return r.kv, r.present, r.rev, nil
}

// decodeStored decodes a stored value and reports whether it is live at
// now. A legacy value (no envelope) has a zero expiry and is live as far
// as decodeStored can tell: legacyLive asks etcd. A tombstone is a value
// that expired in 1970.
func decodeStored(value []byte, now time.Time) (data []byte, expiry time.Time, live bool, err error) {
	expiry, hasExpiry, data, err := decodeEnvelope(value)
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	if hasExpiry && !now.Before(expiry) {
		return nil, expiry, false, nil
	}
	return data, expiry, true, nil
}

// liveValue decodes the stored session kv at key and reports whether it
// is live at now: by the expiry in its envelope, or, for a legacy value,
// by its lease (legacyLive, within c, whose answers known, if not nil,
// caches). A sealed value that does not open is not live (plain counts
// it). Its errors are decodeStored's, which wrap errCorrupt, and
// legacyLive's, without the package prefix.
func (s *EtcdStore) liveValue(c call, key string, kv storedKV, now time.Time, known map[int64]bool) (data []byte, expiry time.Time, live bool, err error) {
	value, err := s.plain(key, kv.value)
	if errors.Is(err, errUnopenable) {
		return nil, time.Time{}, false, nil
	}
	if err != nil {
		return nil, time.Time{}, false, err
	}
	data, expiry, live, err = decodeStored(value, now)
	if err == nil && live && expiry.IsZero() {
		live, err = s.legacyLive(c, kv.lease, known)
		if err != nil {
			err = fmt.Errorf("remaining TTL of legacy session's lease %x: %w", kv.lease, err)
		}
	}
	return data, expiry, live, err
}

// legacyLive reports whether a legacy value, written by
// github.com/alexedwards/scs/etcdstore without an envelope on lease id
// (0: none), is live. That store expires a session through its lease
// alone, so the session is live while the lease has at least a second
// left: etcd gives the remaining TTL in whole seconds, rounded down
// (server/etcdserver/v3_server.go, LeaseTimeToLive), so this may call a
// session expired up to a second early, never late. known, if not nil,
// holds the answers already had, by lease, and gets this one.
func (s *EtcdStore) legacyLive(c call, id int64, known map[int64]bool) (bool, error) {
	if id == 0 {
		return true, nil
	}
	if live, ok := known[id]; ok {
		return live, nil
	}
	resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.LeaseTimeToLiveResponse, error) {
		return s.client.TimeToLive(ctx, clientv3.LeaseID(id))
	})
	var live bool
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
	case err != nil:
		return false, err
	default:
		live = resp.TTL > 0
	}
	if known != nil {
		known[id] = live
	}
	return live, nil
}
