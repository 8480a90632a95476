package etcdstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
// store's user needs readwrite on PrincipalIndexRange(prefix) as well as
// on its session prefix.
const PrincipalIndexRoot = "etcdstore/principal/"

// maxTxnOps is etcd's default --max-txn-ops, the most operations one Txn
// may hold in its Then branch (and the most compares); DeleteByPrincipal
// splits its deletes into Txns that fit it.
const maxTxnOps = 128

// deletePasses bounds how often DeleteByPrincipal reads the index again
// after a concurrent change made one of its Txns fail.
const deletePasses = 5

// PrincipalIndexRange returns the key prefix of the principal index of a
// store whose sessions are under prefix.
func PrincipalIndexRange(prefix string) string {
	return PrincipalIndexRoot + strconv.Itoa(len(prefix)) + ":" + prefix + "/"
}

// WithPrincipal makes the store keep an index of sessions by principal:
// the string form (fmt.Sprint) of the session value under key, as the
// codec (WithCodec) decodes the data, such as the user ID an app puts
// into the session at login. A session without the key, with a nil value
// or one whose string form is empty, or whose data the codec cannot
// decode, has no principal. FindByPrincipal and DeleteByPrincipal need it.
//
// SCS holds a session's lock while it commits, so the store decodes the
// data it is given rather than asking the session manager. With it, a
// Find decodes the session too, to know what to remove from the index
// when the session changes hands or is deleted, and a commit of a session
// with a principal is one Txn that writes two keys.
func WithPrincipal(key string) Option {
	return func(o *options) { o.principal = key }
}

// principalOf returns the principal that data names under the store's
// principal key, and whether it names one.
func (s *EtcdStore) principalOf(data []byte) (string, bool) {
	if s.principalKey == "" {
		return "", false
	}
	_, values, err := s.codec.Decode(data)
	if err != nil {
		return "", false
	}
	v, ok := values[s.principalKey]
	if !ok || v == nil {
		return "", false
	}
	p := fmt.Sprint(v)
	return p, p != ""
}

// principalFor returns the principal that data names, as principalOf
// does, and the digests to remember with it. It decodes data only when
// its digest is not one of those remembered (last, if known) for the
// session's principal: SCS commits a session on every request with
// IdleTimeout, and its GobCodec writes a session of two values in one of
// two orders.
func (s *EtcdStore) principalFor(last sighting, known bool, data []byte) (string, bool, [2]uint64) {
	sum := maphash.Bytes(s.seed, data)
	if known && last.stored && last.indexKnown && (last.sums[0] == sum || last.sums[1] == sum) {
		return last.indexed, last.indexed != "", last.sums
	}
	p, has := s.principalOf(data)
	if known && last.stored && last.indexKnown && last.indexed == p {
		return p, has, [2]uint64{sum, last.sums[0]}
	}
	return p, has, [2]uint64{sum}
}

// principalPrefix returns the key prefix of the index entries of
// principal.
func (s *EtcdStore) principalPrefix(principal string) string {
	sum := sha256.Sum256([]byte(principal))
	return s.index + hex.EncodeToString(sum[:16]) + "/"
}

// indexKey returns the key of the index entry of principal and token.
func (s *EtcdStore) indexKey(principal, token string) string {
	return s.principalPrefix(principal) + token
}

// indexOps returns the operations that bring the index entries of token
// from what the store knows of its stored session (seen) to a session
// data whose principal is p (has false: none), on lease id.
func (s *EtcdStore) indexOps(token string, seen sighting, known bool, p string, has bool, id clientv3.LeaseID) []clientv3.Op {
	var ops []clientv3.Op
	if has {
		ops = append(ops, clientv3.OpPut(s.indexKey(p, token), "", clientv3.WithLease(id)))
	}
	if known && seen.stored && seen.indexKnown && seen.indexed != "" && (!has || seen.indexed != p) {
		ops = append(ops, clientv3.OpDelete(s.indexKey(seen.indexed, token)))
	}
	return ops
}

// ErrNoPrincipal is wrapped by the error FindByPrincipal and
// DeleteByPrincipal return, at once, on a store made without
// WithPrincipal.
var ErrNoPrincipal = errors.New("etcdstore: the store keeps no index of sessions by principal: make it with the WithPrincipal option")

// errNoPrincipal is the error of method on a store made without
// WithPrincipal.
func errNoPrincipal(method string) error {
	return fmt.Errorf("%w (%s needs it)", ErrNoPrincipal, method)
}

// indexEntry is one entry of the principal index, as read.
type indexEntry struct {
	key     string
	token   string
	rev     int64 // its ModRevision
	created int64 // its CreateRevision
}

// FindByPrincipal returns the live sessions of principal, token to data,
// as AllCtx gives them, and an empty, non-nil map when there are none.
// It reads the principal's index entries and then their sessions: two
// etcd requests for a principal with up to 128 sessions, whatever the
// total, both within the store's timeout. A session whose data no longer
// names principal, or that has expired, is left out. Errors are those of
// the etcd requests, an error for a stored value that does not decode,
// and ErrNoPrincipal when the store was made without WithPrincipal.
func (s *EtcdStore) FindByPrincipal(ctx context.Context, principal string) (map[string][]byte, error) {
	if s.principalKey == "" {
		return nil, errNoPrincipal("FindByPrincipal")
	}
	entries, kvs, err := s.principalSessions(s.newCall(ctx), principal)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: find by principal: %w", err)
	}
	sessions := make(map[string][]byte)
	for _, e := range entries {
		if data, ok, err := s.ofPrincipal(kvs[e.token], principal); err != nil {
			return nil, fmt.Errorf("%w (key %q)", err, kvs[e.token].Key)
		} else if ok {
			sessions[e.token] = data
		}
	}
	return sessions, nil
}

// DeleteByPrincipal deletes every live session of principal except the
// tokens in except (the caller's own, for "log out other devices"), with
// their index entries, and returns how many sessions it deleted. Index
// entries that no longer index a live session of principal are deleted
// too. Each session is deleted only if it is still indexed under
// principal by the entry read with it (a commit that changes or removes
// its principal deletes that entry, while the commits of requests in
// flight only rewrite it), in Txns of at most 64 sessions (etcd's
// --max-txn-ops defaults to 128); a Txn that a concurrent change fails is
// made again from a fresh read, up to 5 times. All of it waits for etcd
// no longer than the store's timeout (WithTimeout).
//
// Once it returns nil, no request in flight on any app server can bring
// one of the deleted sessions back: each leaves a tombstone on its lease,
// as Delete's, that no commit writes over. A session of principal created
// after it began may survive. While etcd is out of space it fails with an
// error wrapping rpctypes.ErrNoSpace.
//
// On an error, the sessions of the Txns that went through are deleted
// and the others are not, and the count says how many were; calling it
// again finishes the work. Errors are those of the etcd requests, and
// ErrNoPrincipal when the store was made without WithPrincipal.
func (s *EtcdStore) DeleteByPrincipal(ctx context.Context, principal string, except ...string) (int, error) {
	if s.principalKey == "" {
		return 0, errNoPrincipal("DeleteByPrincipal")
	}
	keep := make(map[string]bool, len(except))
	for _, t := range except {
		keep[t] = true
	}
	deleted := 0
	c := s.newCall(ctx)
	for range deletePasses {
		entries, kvs, err := s.principalSessions(c, principal)
		if err != nil {
			return deleted, fmt.Errorf("etcdstore: delete by principal: %w", err)
		}
		var ops []clientv3.Op
		var batch []clientv3.Cmp
		var tokens []string // the sessions of the batch
		clean := true
		flush := func() error {
			if len(ops) == 0 {
				return nil
			}
			var resp *clientv3.TxnResponse
			err := s.do(c, func(ctx context.Context) (err error) {
				resp, err = s.client.Txn(ctx).If(batch...).Then(ops...).Commit()
				return err
			})
			if err != nil {
				return err
			}
			if resp.Succeeded {
				deleted += len(tokens)
				for _, t := range tokens {
					s.memory.sawGone(t, resp.Header.Revision)
				}
			} else {
				clean = false
			}
			ops, batch, tokens = ops[:0], batch[:0], tokens[:0]
			return nil
		}
		for _, e := range entries {
			if keep[e.token] {
				continue
			}
			kv := kvs[e.token]
			if _, ok, _ := s.ofPrincipal(kv, principal); ok {
				// Deleted unless its entry was deleted since: a change
				// of principal takes the entry, while the commits of
				// requests in flight, which rewrite the session and its
				// entry, leave the entry's creation as it was. The
				// session leaves a tombstone on its lease, as Delete's.
				batch = append(batch,
					clientv3.Compare(clientv3.CreateRevision(e.key), "=", e.created),
					clientv3.Compare(clientv3.Version(string(kv.Key)), ">", 0)) // WithIgnoreLease needs the key
				ops = append(ops, clientv3.OpPut(string(kv.Key), tombstone, clientv3.WithIgnoreLease()), clientv3.OpDelete(e.key))
				tokens = append(tokens, e.token)
			} else {
				// Stale: remove it unless it was written again since.
				batch = append(batch, clientv3.Compare(clientv3.ModRevision(e.key), "=", e.rev))
				ops = append(ops, clientv3.OpDelete(e.key))
			}
			if len(ops) > maxTxnOps-2 {
				if err := flush(); err != nil {
					return deleted, fmt.Errorf("etcdstore: delete by principal: %w", err)
				}
			}
		}
		if err := flush(); err != nil {
			return deleted, fmt.Errorf("etcdstore: delete by principal: %w", err)
		}
		if clean {
			return deleted, nil
		}
	}
	return deleted, fmt.Errorf("etcdstore: delete by principal: the sessions kept changing; %d deleted, try again", deleted)
}

// principalSessions reads, within c, the index entries of principal and
// the sessions they name, keyed by token (nil where there is none).
func (s *EtcdStore) principalSessions(c call, principal string) ([]indexEntry, map[string]*mvccpb.KeyValue, error) {
	from := s.principalPrefix(principal)
	var resp *clientv3.GetResponse
	err := s.do(c, func(ctx context.Context) (err error) {
		resp, err = s.client.Get(ctx, from, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	entries := make([]indexEntry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		token := strings.TrimPrefix(string(kv.Key), from)
		if validToken(token) {
			entries = append(entries, indexEntry{key: string(kv.Key), token: token, rev: kv.ModRevision, created: kv.CreateRevision})
		}
	}
	kvs := make(map[string]*mvccpb.KeyValue, len(entries))
	for start := 0; start < len(entries); start += maxTxnOps {
		batch := entries[start:min(start+maxTxnOps, len(entries))]
		gets := make([]clientv3.Op, len(batch))
		for i, e := range batch {
			gets[i] = clientv3.OpGet(keyFor(s.prefix, e.token))
		}
		var txn *clientv3.TxnResponse
		err := s.do(c, func(ctx context.Context) (err error) {
			txn, err = s.client.Txn(ctx).Then(gets...).Commit()
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		for i, r := range txn.Responses {
			if got := r.GetResponseRange().GetKvs(); len(got) > 0 {
				kvs[batch[i].token] = got[0]
			}
		}
	}
	return entries, kvs, nil
}

// ofPrincipal returns the data of the stored session kv (nil: none) and
// whether it is live and names principal.
func (s *EtcdStore) ofPrincipal(kv *mvccpb.KeyValue, principal string) ([]byte, bool, error) {
	if kv == nil {
		return nil, false, nil
	}
	data, _, live, err := open(kv.Value, s.now())
	if err != nil || !live {
		return nil, false, err
	}
	p, has := s.principalOf(data)
	if !has || p != principal {
		return nil, false, nil
	}
	return data, true, nil
}
