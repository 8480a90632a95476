package etcdstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"

	"github.com/alexedwards/scs/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The principal index: sessions by user.
//
// With WithPrincipal(key), a commit whose session data holds a value
// under key also writes an index entry for that principal and token, in
// the same Txn as the session and on the same lease, so the entry never
// outlives the session's key and a commit stays one raft write. The entry
// of a principal the token no longer has goes in that Txn too, when the
// store knows it (it read or wrote the token last); so does a deleted
// session's.
//
// Entries live under PrincipalIndexRoot, outside every session prefix:
//
//	etcdstore/principal/<len(prefix)>:<prefix>/<hash>/<token>
//
// where <hash> is the first 16 bytes of the SHA-256 of the principal's
// string form, in hex: any principal, however long or strange, makes a
// key of fixed size that stays in its range. Spelling out the prefix's
// length keeps the ranges of two stores apart whenever their session
// prefixes are apart.
//
// Reads verify: FindByPrincipal and DeleteByPrincipal read each entry's
// session and use it only if it is live and its data names the
// principal. An entry that outlived what it indexed (the session was
// deleted by a store that did not know its principal, or another store
// changed its principal) therefore yields nothing; DeleteByPrincipal
// deletes it, and otherwise its lease does, at the latest when the
// session it was written with would have expired.

// PrincipalIndexRoot is the key prefix under which every store keeps its
// principal index (see WithPrincipal). With etcd authentication on, a
// store's user needs readwrite on PrincipalIndexPrefix(prefix) as well as
// on its session prefix.
const PrincipalIndexRoot = "etcdstore/principal/"

// maxTxnOps is etcd's default --max-txn-ops, the most operations one Txn
// may hold in a branch, and the most compares (server/etcdserver/api/
// v3rpc/key.go, checkTxnRequest); the principal calls split their
// requests into Txns that fit it.
const maxTxnOps = 128

// deletePasses bounds how often DeleteByPrincipal reads the index again
// after a concurrent change made one of its Txns fail, with a growing
// random pause between (retrier.pause), within the call's deadline.
const deletePasses = 64

// PrincipalIndexPrefix returns the key prefix of the principal index of a
// store whose sessions are under prefix: the range, for an etcd role, is
// every key that begins with it.
func PrincipalIndexPrefix(prefix string) string {
	return PrincipalIndexRoot + strconv.Itoa(len(prefix)) + ":" + prefix + "/"
}

// PrincipalIndexRange is PrincipalIndexPrefix, under its earlier name.
//
// Deprecated: use PrincipalIndexPrefix, which says what it returns.
func PrincipalIndexRange(prefix string) string { return PrincipalIndexPrefix(prefix) }

// principalIndex is a store's index of sessions by principal: how it reads
// a session's principal and the keys and operations of its entries. It
// does no I/O and is safe for concurrent use by multiple goroutines.
type principalIndex struct {
	key    string // WithPrincipal's
	codec  scs.Codec
	seed   maphash.Seed // of the digests of session data
	prefix string       // PrincipalIndexPrefix of the session prefix
	stats  *stats       // counts the data the codec cannot decode
	sealer *sealer      // WithEncryption's, whose keys hash principals; or nil
}

func newPrincipalIndex(key, sessionPrefix string, codec scs.Codec, st *stats, sl *sealer) *principalIndex {
	return &principalIndex{key: key, codec: codec, seed: maphash.MakeSeed(), prefix: PrincipalIndexPrefix(sessionPrefix), stats: st, sealer: sl}
}

// sealing is the ID of the key that seals new sessions (0: none), under
// whose index key their entries hash principals.
func (x *principalIndex) sealing() uint32 {
	if x.sealer == nil {
		return 0
	}
	return x.sealer.sealedID()
}

// decode returns the principal that data names, and whether it names one.
func (x *principalIndex) decode(data []byte) (string, bool) {
	_, values, err := x.codec.Decode(data)
	if err != nil {
		x.stats.codecErrors.Add(1)
		return "", false
	}
	v, ok := values[x.key]
	if !ok || v == nil {
		return "", false
	}
	p := fmt.Sprint(v)
	return p, p != ""
}

// of returns the principal that data names, as decode does, and the
// digests to remember with it. It decodes data only when its digest is
// not one of those remembered (last, if known) for the session's
// principal: SCS commits a session on every request with IdleTimeout,
// and its GobCodec writes a session of two values in one of two orders.
func (x *principalIndex) of(last tokenState, known bool, data []byte) (string, bool, [2]uint64) {
	sum := maphash.Bytes(x.seed, data)
	if known && last.stored && last.principalKnown && (last.digests[0] == sum || last.digests[1] == sum) {
		return last.principal, last.principal != "", last.digests
	}
	p, has := x.decode(data)
	if known && last.stored && last.principalKnown && last.principal == p {
		return p, has, [2]uint64{sum, last.digests[0]}
	}
	return p, has, [2]uint64{sum}
}

// entries returns the key prefix of the index entries of principal for
// sessions sealed under key id (0: in the clear), and false if the store
// lacks that key.
func (x *principalIndex) entries(id uint32, principal string) (string, bool) {
	h, ok := x.sealer.indexHash(id, principal)
	return x.prefix + h + "/", ok
}

// entry returns the key of the index entry of principal and token for a
// session sealed under key id, and false if the store lacks that key.
func (x *principalIndex) entry(id uint32, principal, token string) (string, bool) {
	from, ok := x.entries(id, principal)
	return from + token, ok
}

// ops returns the operations that bring the index entries of token from
// what the store knows of its stored session (base, if known) to session
// data whose principal is p (has false: none), on lease id.
func (x *principalIndex) ops(token string, base tokenState, known bool, p string, has bool, id clientv3.LeaseID) []clientv3.Op {
	var ops []clientv3.Op
	now := x.sealing()
	if has {
		e, _ := x.entry(now, p, token)
		ops = append(ops, clientv3.OpPut(e, "", clientv3.WithLease(id)))
	}
	if known && base.stored && base.principalKnown && base.principal != "" && (!has || base.principal != p || base.sealedBy != now) {
		// An entry under a key dropped since goes with its lease.
		if e, ok := x.entry(base.sealedBy, base.principal, token); ok {
			ops = append(ops, clientv3.OpDelete(e))
		}
	}
	return ops
}

// indexEntry is one entry of the principal index, as read.
type indexEntry struct {
	key     string
	token   string
	rev     int64  // its ModRevision
	created int64  // its CreateRevision
	id      uint32 // the key whose index hash it is under (0: in the clear)
}

// FindByPrincipal returns the live sessions of principal, token to data,
// as AllCtx gives them, and an empty, non-nil map when there are none.
// It reads the principal's index entries and then their sessions: two
// etcd requests for a principal with up to 128 sessions, whatever the
// total, both within the store's timeout. A session whose data no longer
// names principal, or that has expired, is left out. Errors are those of
// the etcd requests, an error for a stored value that does not decode,
// ErrNoPrincipal when the store was made without WithPrincipal, and
// ErrClientClosed.
func (s *EtcdStore) FindByPrincipal(ctx context.Context, principal string) (sessions map[string][]byte, err error) {
	mustContext(ctx, "FindByPrincipal")
	defer s.stats.begin(&s.stats.findsByPrincipal, &s.stats.latency.findByPrincipal).end(&err)
	if s.index == nil {
		return nil, errNoPrincipal("FindByPrincipal")
	}
	if err := clientErr(s.client); err != nil {
		return nil, fmt.Errorf("etcdstore: find by principal: %w", err)
	}
	entries, kvs, _, err := s.principalSessions(s.calls.newCall(ctx), principal)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: find by principal: %w", err)
	}
	sessions = make(map[string][]byte)
	for _, e := range entries {
		if data, ok, err := s.ofPrincipal(kvs[e.token], principal); err != nil {
			return nil, fmt.Errorf("%w (%s)", err, whichSession(kvs[e.token].ModRevision))
		} else if ok {
			sessions[e.token] = data
		}
	}
	return sessions, nil
}

// DeleteByPrincipal ends every session of principal except the tokens in
// except (the caller's own, for "log out other devices"), with their index
// entries, and returns how many it ended: those live, and those whose
// expiry has passed but whose key etcd still holds, which a request in
// flight that loaded them before their expiry could otherwise commit
// again (a store with WithPrincipal keeps a session's key the request
// bound past its expiry, WithMaxRequestDuration, so that it is found
// here). Index entries that no longer index a session of principal are
// deleted too. Each session is ended only if it is still indexed under
// principal by the entry read with it (a commit that changes or removes
// its principal deletes that entry, while the commits of requests in
// flight only rewrite it), in Txns of at most 64 sessions (etcd's
// --max-txn-ops defaults to 128); a Txn that a concurrent change fails is
// made again from a fresh read, after a growing random pause, until the
// call's deadline. All of it waits for etcd no longer than the store's
// timeout (WithTimeout).
//
// Once it returns nil, no request in flight on any app server can bring
// one of the ended sessions back: each leaves a tombstone, as Delete's,
// that no commit writes over. A session of principal created after it
// began may survive. While etcd is out of space it fails with an error
// wrapping rpctypes.ErrNoSpace.
//
// On an error, the sessions of the Txns that went through are deleted
// and the others are not, and the count says how many were; calling it
// again finishes the work. Errors are those of the etcd requests,
// ErrNoPrincipal when the store was made without WithPrincipal,
// ErrClientClosed, and ErrRawToken, before anything is deleted, when a
// token in except is the app's where the store's is wanted.
//
// The tokens in except are the store's: with HashTokenInStore, pass
// StoreToken(sm, sm.Token(ctx)), not the token the app has.
func (s *EtcdStore) DeleteByPrincipal(ctx context.Context, principal string, except ...string) (deleted int, err error) {
	mustContext(ctx, "DeleteByPrincipal")
	defer s.stats.begin(&s.stats.deletesByPrincipal, &s.stats.latency.deleteByPrincipal).end(&err)
	if s.index == nil {
		return 0, errNoPrincipal("DeleteByPrincipal")
	}
	if err := clientErr(s.client); err != nil {
		return 0, fmt.Errorf("etcdstore: delete by principal: %w", err)
	}
	keep := make(map[string]bool, len(except))
	for _, t := range except {
		keep[t] = true
	}
	c := s.calls.newCall(ctx)
	for pass := range deletePasses {
		if pass > 0 && !s.calls.pause(c, pass) {
			break
		}
		entries, kvs, _, err := s.principalSessions(c, principal)
		if err != nil {
			return deleted, fmt.Errorf("etcdstore: delete by principal: %w", err)
		}
		// An entry guards its session's end only if the session, live or
		// expired, names principal and the entry is the one its commits
		// keep: under the hash of the key that sealed it. Another (left by
		// a commit that did not know the entry) is stale.
		ends := make(map[string]bool, len(entries))
		for _, e := range entries {
			kv := kvs[e.token]
			_, names, _, _ := s.storedPrincipal(kv, principal)
			ends[e.key] = names && sealedBy(kv.Value) == e.id
		}
		if pass == 0 {
			if err := rawExcept(entries, keep); err != nil {
				return 0, err
			}
		}
		var leaseErr error
		lease := func() clientv3.LeaseID {
			ctx, cancel := attemptContext(c)
			defer cancel()
			id, err := s.tombstoneLease(ctx)
			leaseErr = cmp.Or(leaseErr, err)
			return id
		}
		batches := planDeletes(entries, ends, keep, s.keys.key, lease, tombstoneOf(EndLogoutEverywhere, s.now()))
		if leaseErr != nil {
			return deleted, fmt.Errorf("etcdstore: delete by principal: %w", leaseErr)
		}
		clean := true
		for _, b := range batches {
			resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
				return s.client.Txn(ctx).If(b.cmps...).Then(b.ops...).Commit()
			})
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				// A tombstone's lease etcd no longer knows: the next pass
				// gets a fresh one.
				for _, id := range b.leases {
					s.leases.forget(id)
				}
				clean = false
				continue
			}
			if err != nil {
				return deleted, fmt.Errorf("etcdstore: delete by principal: %w", err)
			}
			if !resp.Succeeded {
				clean = false
				continue
			}
			deleted += len(b.tokens)
			for _, t := range b.tokens {
				s.tokens.recordGone(t, resp.Header.Revision)
			}
		}
		if clean {
			return deleted, nil
		}
	}
	return deleted, fmt.Errorf("etcdstore: delete by principal: the sessions kept changing; %d deleted, try again", deleted)
}

// rawExcept returns an error wrapping ErrRawToken if a token in keep is
// not one of entries' but its digest (HashTokenInStore's) is. It does no
// I/O.
func rawExcept(entries []indexEntry, keep map[string]bool) error {
	if len(keep) == 0 {
		return nil
	}
	have := make(map[string]bool, len(entries))
	for _, e := range entries {
		have[e.token] = true
	}
	for t := range keep {
		if !have[t] && have[hashToken(t)] {
			return fmt.Errorf("etcdstore: delete by principal: %w", ErrRawToken)
		}
	}
	return nil
}

// deleteBatch is one Txn of DeleteByPrincipal: its compares, its
// operations, the tokens of the sessions it ends and their tombstones'
// leases.
type deleteBatch struct {
	cmps   []clientv3.Cmp
	ops    []clientv3.Op
	tokens []string
	leases []clientv3.LeaseID
}

// planDeletes returns the Txns that delete a principal's index entries,
// but those of the tokens in keep, each within etcd's default
// --max-txn-ops: an entry whose session, live or expired, names the
// principal (ends) with its session, which gets a tombstone on a lease
// from lease, under a compare of the entry's creation (a change of
// principal deletes the entry, while the commits of requests in flight
// only rewrite it); a stale entry under a compare of its mod revision, so
// that an entry written again since stays. key maps a token to its
// session's key; stone is the tombstone. It does no I/O but lease's.
func planDeletes(entries []indexEntry, ends, keep map[string]bool, key func(token string) string, lease func() clientv3.LeaseID, stone string) []deleteBatch {
	var batches []deleteBatch
	var b deleteBatch
	buried := make(map[string]bool)
	for _, e := range entries {
		if keep[e.token] {
			continue
		}
		// A token with entries under two keys' hashes (WithEncryption, an
		// entry its key's rotation left) is buried once; its other
		// entries are stale.
		if ends[e.key] && !buried[e.token] {
			buried[e.token] = true
			id := lease()
			b.cmps = append(b.cmps, clientv3.Compare(clientv3.CreateRevision(e.key), "=", e.created))
			b.ops = append(b.ops, clientv3.OpPut(key(e.token), stone, clientv3.WithLease(id)), clientv3.OpDelete(e.key))
			b.tokens = append(b.tokens, e.token)
			b.leases = append(b.leases, id)
		} else {
			b.cmps = append(b.cmps, clientv3.Compare(clientv3.ModRevision(e.key), "=", e.rev))
			b.ops = append(b.ops, clientv3.OpDelete(e.key))
		}
		if len(b.ops) > maxTxnOps-2 || len(b.cmps) > maxTxnOps-2 {
			batches = append(batches, b)
			b = deleteBatch{}
		}
	}
	if len(b.ops) > 0 {
		batches = append(batches, b)
	}
	return batches
}

// principalSessions reads, within c, the index entries of principal and
// the sessions they name, keyed by token (nil where there is none), and
// returns the revision at which it read the entries.
func (s *EtcdStore) principalSessions(c call, principal string) ([]indexEntry, map[string]*mvccpb.KeyValue, int64, error) {
	// One range per key whose entries may index the principal's
	// sessions: those in the clear, and those of each encryption key.
	var froms []string
	var ranges []clientv3.Op
	ids := s.index.sealer.indexIDs()
	for _, id := range ids {
		from, _ := s.index.entries(id, principal)
		froms = append(froms, from)
		ranges = append(ranges, clientv3.OpGet(from, clientv3.WithPrefix(), clientv3.WithKeysOnly()))
	}
	resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.client.Txn(ctx).Then(ranges...).Commit()
	})
	if err != nil {
		return nil, nil, 0, err
	}
	var entries []indexEntry
	for i, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			token := strings.TrimPrefix(string(kv.Key), froms[i])
			if validToken(token) {
				entries = append(entries, indexEntry{key: string(kv.Key), token: token, rev: kv.ModRevision, created: kv.CreateRevision, id: ids[i]})
			}
		}
	}
	kvs := make(map[string]*mvccpb.KeyValue, len(entries))
	for start := 0; start < len(entries); start += maxTxnOps {
		batch := entries[start:min(start+maxTxnOps, len(entries))]
		gets := make([]clientv3.Op, len(batch))
		for i, e := range batch {
			gets[i] = clientv3.OpGet(s.keys.key(e.token))
		}
		txn, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			return s.client.Txn(ctx).Then(gets...).Commit()
		})
		if err != nil {
			return nil, nil, 0, err
		}
		for i, r := range txn.Responses {
			if got := r.GetResponseRange().GetKvs(); len(got) > 0 {
				kvs[batch[i].token] = got[0]
			}
		}
	}
	return entries, kvs, resp.Header.Revision, nil
}

// ofPrincipal returns the data of the stored session kv (nil: none) and
// whether it is live and names principal.
func (s *EtcdStore) ofPrincipal(kv *mvccpb.KeyValue, principal string) ([]byte, bool, error) {
	data, names, live, err := s.storedPrincipal(kv, principal)
	if err != nil || !names || !live {
		return nil, false, err
	}
	return data, true, nil
}

// storedPrincipal returns the data of the stored session kv (nil: none),
// whether it names principal, live or expired, and whether it is live
// now. A tombstone, and a sealed value that does not open, name no one.
func (s *EtcdStore) storedPrincipal(kv *mvccpb.KeyValue, principal string) (data []byte, names, live bool, err error) {
	if kv == nil || isTombstone(kv.Value) {
		return nil, false, false, nil
	}
	value, err := s.plain(string(kv.Key), kv.Value)
	if errors.Is(err, errUnopenable) {
		return nil, false, false, nil
	}
	if err != nil {
		return nil, false, false, err
	}
	expiry, hasExpiry, data, err := decodeEnvelope(value)
	if err != nil {
		return nil, false, false, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	p, has := s.index.decode(data)
	return data, has && p == principal, !hasExpiry || s.now().Before(expiry), nil
}
