package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// AllCtx returns the data of every live session under the store's prefix,
// keyed by token, and an empty, non-nil map when there is none. It reads
// in pages (see WithPageSize) pinned to the revision of the first, so the
// result is one consistent snapshot of the keyspace, or from the read
// cache (WithReadCache). If etcd compacts that revision during the scan,
// the scan starts over once at a new revision; a second compaction
// returns an error wrapping rpctypes.ErrCompacted. Errors are also those
// of the etcd requests, ErrClientClosed, and one for a stored value that
// bears this store's envelope but does not decode.
func (s *EtcdStore) AllCtx(ctx context.Context) (sessions map[string][]byte, err error) {
	mustContext(ctx, "AllCtx")
	defer s.stats.begin(&s.stats.alls, &s.stats.latency.all).end(&err)
	if err := clientErr(s.client); err != nil {
		return nil, fmt.Errorf("etcdstore: all: %w", err)
	}
	c := s.calls.newCall(ctx)
	if s.cache != nil {
		if sessions, ok, err := s.allCached(c); ok {
			return sessions, err
		}
	}
	sessions, err = s.scan(ctx, c)
	if errors.Is(err, rpctypes.ErrCompacted) {
		sessions, err = s.scan(ctx, s.calls.newCall(ctx))
	}
	if err != nil {
		return nil, err
	}
	return sessions, nil
}

// allCached is AllCtx from the read cache, and reports false when the
// cache cannot serve the read.
func (s *EtcdStore) allCached(c call) (map[string][]byte, bool, error) {
	type entry struct {
		token string
		kv    storedKV
	}
	var entries []entry
	// Copied out under the cache's read lock, decoded after it.
	if !s.cache.read(c, func(values map[string]storedKV, _ int64) {
		entries = make([]entry, 0, len(values))
		for token, kv := range values {
			entries = append(entries, entry{token, kv})
		}
	}) {
		return nil, false, nil
	}
	snap := s.newSnapshot(len(entries))
	for _, e := range entries {
		if err := snap.add(c, e.token, e.kv); err != nil {
			return nil, true, err
		}
	}
	snap.remember()
	return snap.sessions, true, nil
}

// scan reads the whole prefix range in pages at one revision, the first
// within c, each of the others within a call of its own.
func (s *EtcdStore) scan(ctx context.Context, c call) (map[string][]byte, error) {
	snap := s.newSnapshot(0)
	var addErr error
	_, err := s.keys.list(ctx, s.client, s.calls, c, func(c call, kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			if addErr = snap.add(c, s.keys.token(kv.Key), kvOf(kv)); addErr != nil {
				return addErr
			}
		}
		snap.remember()
		return nil
	})
	if addErr != nil {
		return nil, addErr
	}
	if err != nil {
		return nil, fmt.Errorf("etcdstore: all: %w", err)
	}
	return snap.sessions, nil
}

// snapshot gathers the live sessions of one All at one revision, and
// what the store remembers of them: so that the commits of SCS's Iterate,
// whose callback may commit them, compare the revisions read.
type snapshot struct {
	s        *EtcdStore
	now      time.Time // one instant for the whole snapshot
	sessions map[string][]byte
	legacy   map[int64]bool // whether each lease of legacy values is live
	tokens   []string       // the sessions added since the last remember
	states   []tokenState   // and their states
}

func (s *EtcdStore) newSnapshot(size int) *snapshot {
	return &snapshot{s: s, now: s.now(), sessions: make(map[string][]byte, size), legacy: make(map[int64]bool)}
}

// add adds the session token, stored as kv, if it is live, asking etcd
// within c of a legacy one.
func (a *snapshot) add(c call, token string, kv storedKV) error {
	data, expiry, live, err := a.s.liveValue(c, a.s.keys.key(token), kv, a.now, a.legacy)
	if errors.Is(err, errCorrupt) {
		return fmt.Errorf("%w (%s)", err, whichSession(kv.mod))
	}
	if err != nil {
		return fmt.Errorf("etcdstore: all: %w", err)
	}
	if live {
		a.sessions[token] = data
		a.tokens = append(a.tokens, token)
		a.states = append(a.states, tokenState{rev: kv.mod, stored: true, expiry: expiry})
	}
	return nil
}

// remember records the states of the sessions added since the last call,
// under one lock of the token memory.
func (a *snapshot) remember() {
	a.s.tokens.recordAll(a.tokens, a.states)
	a.tokens, a.states = a.tokens[:0], a.states[:0]
}
