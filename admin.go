package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Operators' calls: list every session, end every session, rewrite every
// session under the first encryption key (reseal.go), and check the
// principal index against the sessions (reseal.go). The etcdstore command
// (cmd/etcdstore) is built on them.
//
// Each walks the store's range in pages of the store's page size
// (WithPageSize, 1000 keys by default), each page a call of its own, with
// the store's timeout, read at etcd's revision of the moment: a million
// sessions stream in constant memory, and no page outlives a compaction.
// A walk is therefore no snapshot: a session is met at most once, a session
// written after the walk passed its key is not met, and a page's sessions
// are as they were when it was read. The writes are conditional on the mod
// revision read, as the store's commits are, so a session that an app
// server commits meanwhile is read again rather than overwritten.

// adminBatch is how many sessions one write Txn of EndAll and Reseal
// carries, each as a nested Txn of one compare and up to three operations
// a branch: within etcd's default --max-txn-ops of 128, as batch.go's
// commits are.
const adminBatch = 32

// adminRounds bounds how often EndAll and Reseal read a session again
// after an app server committed it between their read and their write.
const adminRounds = 5

// SessionInfo describes one stored session, as Sessions lists it.
type SessionInfo struct {
	// Token is the store's token: the session's key without the prefix.
	// With HashTokenInStore it is a digest of the cookie's token, else the
	// cookie's token itself.
	Token string
	// Expiry is the session's expiry, from its envelope; zero for a
	// session written by github.com/alexedwards/scs/etcdstore, whose
	// lease alone bounds its life.
	Expiry time.Time
	// Size is the size of the stored value in bytes: the data, its 12-byte
	// envelope and, when sealed, 44 bytes more.
	Size int
	// Principal is the session's principal (see WithPrincipal), or "" when
	// it names none, the store was made without WithPrincipal, or the
	// session is sealed under a key the store was not given.
	Principal string
	// Revision is the etcd mod revision of the session's last write.
	Revision int64
	// SealedBy is the ID of the key that sealed the session (see
	// KeyID), 0 for a session in the clear.
	SealedBy uint32
	// Opened reports whether the store could read the data: false for a
	// session sealed under a key it was not given.
	Opened bool
	// Data is the session's data, as SCS's codec encoded it, when Opened.
	Data []byte
}

// KeyID returns the ID under which a value sealed with key names it (see
// SessionInfo.SealedBy): the first 4 bytes of HMAC-SHA-256(key, "etcdstore
// key id"), never 0. It does no I/O.
func KeyID(key []byte) uint32 { return keyID(key) }

// ReadCacheSupported reports whether WithReadCache serves reads on an
// etcd server of version, as the server's Status gives it ("3.5.13"):
// 3.4.31 or later in 3.4, 3.5.13 or later in 3.5, any later minor (see The
// read cache in the package documentation). It does no I/O.
func ReadCacheSupported(version string) bool { return progressTrusted(version) }

// Sessions lists the live sessions under the store's prefix, in key order,
// from the token from ("" for the first), with their expiry, size,
// principal and revision; tombstones and expired sessions are left out. A
// session sealed under a key the store was not given is listed, live by
// the expiry in its envelope, with Opened false. It reads in pages (see
// the walk above), so the sessions it yields were live when their page was
// read; a session written after the walk passed its key is not yielded.
//
// On an error, it yields a zero SessionInfo and the error, and stops.
// Errors are those of the etcd requests, which wrap ctx's error once it
// ends, ErrClientClosed, and one for a stored value that bears the
// store's envelope but does not decode. The sequence may be ranged over
// once per call; the store is safe for concurrent use meanwhile.
func (s *EtcdStore) Sessions(ctx context.Context, from string) iter.Seq2[SessionInfo, error] {
	mustContext(ctx, "Sessions")
	return func(yield func(SessionInfo, error) bool) {
		if err := clientErr(s.client); err != nil {
			yield(SessionInfo{}, fmt.Errorf("etcdstore: sessions: %w", err))
			return
		}
		stop := errors.New("stopped")
		err := s.walk(ctx, s.keys.key(from), s.keys.end, func(c call, kvs []*mvccpb.KeyValue) error {
			now, legacy := s.now(), make(map[int64]bool)
			for _, kv := range kvs {
				info, live, err := s.infoOf(c, kv, now, legacy)
				if err != nil {
					return err
				}
				if live && !yield(info, nil) {
					return stop
				}
			}
			return nil
		})
		if err != nil && err != stop {
			yield(SessionInfo{}, fmt.Errorf("etcdstore: sessions: %w", err))
		}
	}
}

// infoOf describes the stored session kv and reports whether it is live
// at now, asking etcd within c of a legacy one's lease (legacy caches the
// answers).
func (s *EtcdStore) infoOf(c call, kv *mvccpb.KeyValue, now time.Time, legacy map[int64]bool) (SessionInfo, bool, error) {
	if isTombstone(kv.Value) {
		return SessionInfo{}, false, nil
	}
	info := SessionInfo{Token: s.keys.token(kv.Key), Size: len(kv.Value), Revision: kv.ModRevision, SealedBy: sealedBy(kv.Value)}
	value, err := s.plain(string(kv.Key), kv.Value)
	if errors.Is(err, errUnopenable) {
		// Its expiry is in the clear.
		expiry, ok := envelopeExpiry(kv.Value)
		info.Expiry = expiry
		return info, ok && now.Before(expiry), nil
	}
	data, expiry, live, err := decodeStored(value, now)
	if err != nil {
		return SessionInfo{}, false, fmt.Errorf("%w (%s)", err, whichSession(kv.ModRevision))
	}
	if live && expiry.IsZero() {
		if live, err = s.legacyLive(c, kv.Lease, legacy); err != nil {
			return SessionInfo{}, false, err
		}
	}
	info.Expiry, info.Opened, info.Data = expiry, true, data
	if s.index != nil {
		info.Principal, _ = s.index.decode(data)
	}
	return info, live, nil
}

// walk reads the keys from from up to end in pages of the store's page
// size, each in a call of its own at the revision of the moment, and
// hands each page to visit with its call. It returns ctx's error, wrapped,
// once ctx ends.
func (s *EtcdStore) walk(ctx context.Context, from, end string, visit func(c call, kvs []*mvccpb.KeyValue) error) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := s.calls.newCall(ctx)
		resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.GetResponse, error) {
			return s.client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(s.keys.pageSize))
		})
		if err != nil {
			return err
		}
		if err := visit(c, resp.Kvs); err != nil {
			return err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = nextKey(resp.Kvs[len(resp.Kvs)-1].Key)
	}
}

// EndAll ends every session under the store's prefix, from the token from
// ("" for the first), with reason EndRevoked: each gets a tombstone, as
// Delete leaves, on a lease that lasts the store's request bound
// (WithMaxRequestDuration), so that no request in flight on any app server
// brings it back, and its principal index entry is deleted with it. Live
// sessions and expired ones that etcd still holds are ended alike;
// tombstones are left as they are, so a second call ends only what the
// first did not. It returns how many sessions it ended.
//
// Each tombstone is written only if the key still holds what was read, in
// Txns of 32 sessions; a session that an app server committed in between
// is read again and ended, up to 5 times. It is safe while app servers run:
// every session that existed when it began ends, and one created after it
// began may survive (as with DeleteByPrincipal). With WithPrincipal, it
// then deletes every index entry whose session is gone (see CheckIndex).
//
// progress, if not nil, is called after each page with the count so far
// and the token of the page's last key, from which a later call resumes.
// On an error the count says how many sessions were ended. Errors are those
// of the etcd requests, which wrap ctx's error once it ends,
// ErrClientClosed, and one wrapping rpctypes.ErrNoSpace while etcd is out
// of space. It is safe for concurrent use.
func (s *EtcdStore) EndAll(ctx context.Context, from string, progress func(ended int, last string)) (ended int, err error) {
	mustContext(ctx, "EndAll")
	if err := clientErr(s.client); err != nil {
		return 0, fmt.Errorf("etcdstore: end all: %w", err)
	}
	stone := tombstoneOf(EndRevoked, s.now())
	err = s.walk(ctx, s.keys.key(from), s.keys.end, func(c call, kvs []*mvccpb.KeyValue) error {
		n, err := s.rewrite(c, kvs, func(kv *mvccpb.KeyValue) bool { return !isTombstone(kv.Value) },
			func(c call, kv *mvccpb.KeyValue) ([]clientv3.Op, clientv3.LeaseID, error) {
				ctx, cancel := attemptContext(c)
				defer cancel()
				id, err := s.tombstoneLease(ctx)
				if err != nil {
					return nil, 0, err
				}
				ops := []clientv3.Op{clientv3.OpPut(string(kv.Key), stone, clientv3.WithLease(id))}
				if e := s.entryOf(kv); e != "" {
					ops = append(ops, clientv3.OpDelete(e))
				}
				return ops, id, nil
			}, s.tokens.recordGone)
		ended += n
		if err != nil {
			return err
		}
		if progress != nil && len(kvs) > 0 {
			progress(ended, s.keys.token(kvs[len(kvs)-1].Key))
		}
		return nil
	})
	if err == nil && s.index != nil {
		_, err = s.checkEntries(ctx, true)
	}
	if err != nil {
		return ended, fmt.Errorf("etcdstore: end all: %w", err)
	}
	return ended, nil
}

// entryOf returns the key of the principal index entry of the stored
// session kv, or "" when the store keeps no index, the session names no
// principal, or it does not open.
func (s *EtcdStore) entryOf(kv *mvccpb.KeyValue) string {
	if s.index == nil || isTombstone(kv.Value) {
		return ""
	}
	st := s.stateOf(kv) // the principal, as a commit's conflict reads it
	if st.principal == "" {
		return ""
	}
	e, ok := s.index.entry(st.sealedBy, st.principal, s.keys.token(kv.Key))
	if !ok {
		return ""
	}
	return e
}

// rewrite writes, for each session of kvs that needs it, the operations
// that ops returns for it (and the lease they attach, 0 for none),
// conditional on the key's mod revision as read, in Txns of adminBatch
// sessions, and calls wrote for each session written. A session whose
// compare fails is read again (the Txn's Else branch) and, if it still
// needs it, written again, up to adminRounds times. A Txn that etcd refuses
// for a lease it no longer has is made again, its leases forgotten, with
// fresh operations, and then one session at a time: a session whose own
// lease has ended (its key goes with it) is left. It returns how many
// sessions it wrote.
func (s *EtcdStore) rewrite(c call, kvs []*mvccpb.KeyValue, needs func(*mvccpb.KeyValue) bool, ops func(call, *mvccpb.KeyValue) ([]clientv3.Op, clientv3.LeaseID, error), wrote func(token string, rev int64)) (int, error) {
	var todo []*mvccpb.KeyValue
	for _, kv := range kvs {
		if needs(kv) {
			todo = append(todo, kv)
		}
	}
	written := 0
	for round := 0; len(todo) > 0; round++ {
		if round == adminRounds {
			return written, fmt.Errorf("%d sessions kept changing for %d rounds; run again", len(todo), adminRounds)
		}
		var again []*mvccpb.KeyValue
		for start := 0; start < len(todo); start += adminBatch {
			batch := todo[start:min(start+adminBatch, len(todo))]
			resp, err := s.rewriteTxn(c, batch, ops)
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				resp, err = s.rewriteTxn(c, batch, ops)
			}
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				// One at a time: only the sessions whose lease ended fail.
				for _, kv := range batch {
					r, err := s.rewriteTxn(c, []*mvccpb.KeyValue{kv}, ops)
					if errors.Is(err, rpctypes.ErrLeaseNotFound) {
						continue
					}
					if err != nil {
						return written, err
					}
					n, more := s.rewritten(r, []*mvccpb.KeyValue{kv}, needs, wrote)
					written, again = written+n, append(again, more...)
				}
				continue
			}
			if err != nil {
				return written, err
			}
			n, more := s.rewritten(resp, batch, needs, wrote)
			written, again = written+n, append(again, more...)
		}
		todo = again
	}
	return written, nil
}

// rewriteTxn makes one Txn of rewrite for batch within c. On a refusal
// for an unknown lease, it forgets the leases the operations attached.
func (s *EtcdStore) rewriteTxn(c call, batch []*mvccpb.KeyValue, ops func(call, *mvccpb.KeyValue) ([]clientv3.Op, clientv3.LeaseID, error)) (*clientv3.TxnResponse, error) {
	txns := make([]clientv3.Op, len(batch))
	leases := make([]clientv3.LeaseID, 0, len(batch))
	for i, kv := range batch {
		then, id, err := ops(c, kv)
		if err != nil {
			return nil, err
		}
		leases = append(leases, id)
		key := string(kv.Key)
		txns[i] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}, then, []clientv3.Op{clientv3.OpGet(key)})
	}
	resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.client.Txn(ctx).Then(txns...).Commit()
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		for _, id := range leases {
			s.leases.forget(id)
		}
	}
	return resp, err
}

// rewritten counts the sessions of batch that resp says were written,
// calling wrote for each, and returns those whose compare failed and that
// still need writing, as etcd now holds them.
func (s *EtcdStore) rewritten(resp *clientv3.TxnResponse, batch []*mvccpb.KeyValue, needs func(*mvccpb.KeyValue) bool, wrote func(token string, rev int64)) (int, []*mvccpb.KeyValue) {
	n := 0
	var again []*mvccpb.KeyValue
	for i, r := range resp.Responses {
		t := r.GetResponseTxn()
		if t.Succeeded {
			n++
			if wrote != nil {
				wrote(s.keys.token(batch[i].Key), resp.Header.Revision)
			}
			continue
		}
		if cur := t.Responses[0].GetResponseRange().GetKvs(); len(cur) > 0 && needs(cur[0]) {
			again = append(again, cur[0])
		}
	}
	return n, again
}
