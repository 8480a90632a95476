package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ResealReport is what Reseal did.
type ResealReport struct {
	// Resealed counts the sessions it wrote again under the first key.
	Resealed int
	// Current counts the live sessions it found already under the first
	// key (or in the clear, when the first key given to WithEncryption was
	// nil), which it left as they were.
	Current int
	// Unopenable counts the live sessions sealed under a key the store was
	// not given: they still need that key, and read as absent without it.
	Unopenable int
	// Gone counts the sessions that an app server ended, or etcd expired,
	// between Reseal's read and its write; they need no key.
	Gone int
}

// Reseal writes every live session under the store's prefix, from the
// token from ("" for the first), that is sealed under a key other than
// the first of WithEncryption (or stored in the clear) again under the
// first key, with the same data, expiry and lease, and moves its principal
// index entry to the first key's hash; so that an old key can be dropped
// at once rather than after the longest session's lifetime. Each write is
// conditional on the session's mod revision as read, in Txns of 32
// sessions, so a session that an app server commits meanwhile keeps what
// the app server wrote (sealed by the app server's own first key) and is
// read again. Sessions already under the first key are left: a second call
// rewrites only what the first did not, and after an interruption Reseal
// can be called again from the start, or from the last token progress was
// given.
//
// progress, if not nil, is called after each page with the report so far
// and the token of the page's last key. Expired sessions and tombstones
// are left. Once it returns nil, no session it met needs another key but
// those counted in Unopenable; a session an app server writes under an
// old key afterwards (one whose first key is still the old one) does.
//
// It returns an error, having written nothing, for a store made without
// WithEncryption; otherwise those of the etcd requests, which wrap ctx's
// error once it ends, and ErrClientClosed, with the report of what it did
// before. It is safe for concurrent use.
func (s *EtcdStore) Reseal(ctx context.Context, from string, progress func(done ResealReport, last string)) (report ResealReport, err error) {
	mustContext(ctx, "Reseal")
	if s.sealer == nil {
		return report, errors.New("etcdstore: reseal: the store was made without WithEncryption: give it the keys, the one to seal under first")
	}
	if err := clientErr(s.client); err != nil {
		return report, fmt.Errorf("etcdstore: reseal: %w", err)
	}
	first := s.sealer.sealedID()
	err = s.walk(ctx, s.keys.key(from), s.keys.end, func(c call, kvs []*mvccpb.KeyValue) error {
		now := s.now()
		// needs is whether kv is live, opens, and is under another key;
		// it counts the live sessions it turns away the first time.
		counted := make(map[string]bool)
		needs := func(kv *mvccpb.KeyValue) bool {
			expiry, ok := envelopeExpiry(kv.Value)
			if !ok || isTombstone(kv.Value) || !now.Before(expiry) {
				return false // legacy values are in the clear: Reseal writes envelopes alone
			}
			if sealedBy(kv.Value) == first {
				if !counted[string(kv.Key)] {
					counted[string(kv.Key)] = true
					report.Current++
				}
				return false
			}
			if _, err := s.plain(string(kv.Key), kv.Value); err != nil {
				if !counted[string(kv.Key)] {
					counted[string(kv.Key)] = true
					report.Unopenable++
				}
				return false
			}
			return true
		}
		var todo []*mvccpb.KeyValue
		for _, kv := range kvs {
			if needs(kv) {
				todo = append(todo, kv)
			}
		}
		n, err := s.rewrite(c, todo, needs, s.resealOps, nil)
		report.Resealed += n
		// The sessions to reseal that were neither resealed nor found
		// current or unopenable when read again were ended meanwhile.
		if err == nil {
			report.Gone += len(todo) - n - countedAfter(counted, todo)
		}
		if err != nil {
			return err
		}
		if progress != nil && len(kvs) > 0 {
			progress(report, s.keys.token(kvs[len(kvs)-1].Key))
		}
		return nil
	})
	if err != nil {
		return report, fmt.Errorf("etcdstore: reseal: %w", err)
	}
	return report, nil
}

// countedAfter counts the sessions of todo that counted holds: read again
// after a failed compare, they were found current or unopenable.
func countedAfter(counted map[string]bool, todo []*mvccpb.KeyValue) int {
	n := 0
	for _, kv := range todo {
		if counted[string(kv.Key)] {
			n++
		}
	}
	return n
}

// resealOps returns the operations that write the stored session kv
// again under the first key, on its own lease, and move its index entry.
func (s *EtcdStore) resealOps(_ call, kv *mvccpb.KeyValue) ([]clientv3.Op, clientv3.LeaseID, error) {
	key := string(kv.Key)
	value, err := s.plain(key, kv.Value)
	if err != nil {
		return nil, 0, err
	}
	expiry, _, data, err := decodeEnvelope(value)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w (%s)", errCorrupt, err, whichSession(kv.ModRevision))
	}
	id := clientv3.LeaseID(kv.Lease)
	ops := []clientv3.Op{clientv3.OpPut(key, s.seal(expiry, key, data), clientv3.WithLease(id))}
	if s.index != nil {
		if p, has := s.index.decode(data); has {
			token := s.keys.token(kv.Key)
			if old, ok := s.index.entry(sealedBy(kv.Value), p, token); ok {
				ops = append(ops, clientv3.OpDelete(old))
			}
			e, _ := s.index.entry(s.index.sealing(), p, token)
			ops = append(ops, clientv3.OpPut(e, "", clientv3.WithLease(id)))
		}
	}
	return ops, 0, nil
}

// IndexReport is what CheckIndex found, and fixed.
type IndexReport struct {
	// Entries counts the principal index entries read.
	Entries int
	// Stale counts the entries that index no session: its key holds
	// nothing or a tombstone, or a session that names another principal
	// or is sealed under another key than the entry's hash says.
	Stale int
	// Sessions counts the live sessions that name a principal.
	Sessions int
	// Missing counts the live sessions that name a principal and have no
	// entry under it, which FindByPrincipal and DeleteByPrincipal miss.
	Missing int
	// Unverified counts the live sessions sealed under a key the store was
	// not given: their principal, and so their entry, cannot be checked.
	Unverified int
	// Fixed counts the stale entries deleted and the missing ones written,
	// with fix.
	Fixed int
}

// CheckIndex checks the principal index (WithPrincipal) against the
// sessions under the store's prefix, in two walks in pages (see the walk
// above): every entry against its session, then every live session
// against its entry. With fix, it deletes each stale entry, conditional on
// its mod revision as read (a commit that writes it again keeps it), and
// writes each missing one on its session's lease, conditional on the
// session's mod revision as read and on the entry's absence. Sessions and
// entries that app servers write during the walks may be counted either
// way; a second call counts again.
//
// Errors are those of the etcd requests, which wrap ctx's error once it
// ends, ErrNoPrincipal when the store was made without WithPrincipal, and
// ErrClientClosed, with the report of what it did before. It is safe for
// concurrent use.
func (s *EtcdStore) CheckIndex(ctx context.Context, fix bool) (report IndexReport, err error) {
	mustContext(ctx, "CheckIndex")
	if s.index == nil {
		return report, errNoPrincipal("CheckIndex")
	}
	if err := clientErr(s.client); err != nil {
		return report, fmt.Errorf("etcdstore: check index: %w", err)
	}
	if report, err = s.checkEntries(ctx, fix); err != nil {
		return report, fmt.Errorf("etcdstore: check index: %w", err)
	}
	err = s.walk(ctx, s.keys.prefix, s.keys.end, func(c call, kvs []*mvccpb.KeyValue) error {
		now := s.now()
		type want struct {
			kv    *mvccpb.KeyValue
			entry string
		}
		var wants []want
		for _, kv := range kvs {
			if isTombstone(kv.Value) {
				continue
			}
			if expiry, ok := envelopeExpiry(kv.Value); ok && !now.Before(expiry) {
				continue
			}
			if _, err := s.plain(string(kv.Key), kv.Value); err != nil {
				report.Unverified++
				continue
			}
			if e := s.entryOf(kv); e != "" {
				report.Sessions++
				wants = append(wants, want{kv, e})
			}
		}
		for start := 0; start < len(wants); start += maxTxnOps {
			batch := wants[start:min(start+maxTxnOps, len(wants))]
			gets := make([]clientv3.Op, len(batch))
			for i, w := range batch {
				gets[i] = clientv3.OpGet(w.entry, clientv3.WithCountOnly())
			}
			resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
				return s.client.Txn(ctx).Then(gets...).Commit()
			})
			if err != nil {
				return err
			}
			var puts []clientv3.Op
			for i, r := range resp.Responses {
				if r.GetResponseRange().Count > 0 {
					continue
				}
				report.Missing++
				w := batch[i]
				puts = append(puts, clientv3.OpTxn([]clientv3.Cmp{
					clientv3.Compare(clientv3.ModRevision(string(w.kv.Key)), "=", w.kv.ModRevision),
					clientv3.Compare(clientv3.CreateRevision(w.entry), "=", 0),
				}, []clientv3.Op{clientv3.OpPut(w.entry, "", clientv3.WithLease(clientv3.LeaseID(w.kv.Lease)))}, nil))
			}
			if fix {
				n, err := s.applyFixes(c, puts, 2)
				report.Fixed += n
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return report, fmt.Errorf("etcdstore: check index: %w", err)
	}
	return report, nil
}

// checkEntries reads the principal index in pages, each entry's session
// with it, and counts the entries and the stale ones; with fix, it deletes
// the stale ones, each conditional on its mod revision as read.
func (s *EtcdStore) checkEntries(ctx context.Context, fix bool) (IndexReport, error) {
	var report IndexReport
	prefix := s.index.prefix
	err := s.walk(ctx, prefix, rangeEnd(prefix), func(c call, kvs []*mvccpb.KeyValue) error {
		report.Entries += len(kvs)
		type entry struct {
			kv    *mvccpb.KeyValue
			token string
		}
		var entries []entry
		for _, kv := range kvs {
			// <hash>/<token>, where the token may hold '/'.
			_, token, ok := strings.Cut(string(kv.Key[len(prefix):]), "/")
			if !ok {
				continue // not an entry: left alone
			}
			entries = append(entries, entry{kv, token})
		}
		for start := 0; start < len(entries); start += maxTxnOps {
			batch := entries[start:min(start+maxTxnOps, len(entries))]
			gets := make([]clientv3.Op, len(batch))
			for i, e := range batch {
				gets[i] = clientv3.OpGet(s.keys.key(e.token))
			}
			resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
				return s.client.Txn(ctx).Then(gets...).Commit()
			})
			if err != nil {
				return err
			}
			var dels []clientv3.Op
			for i, r := range resp.Responses {
				e := batch[i]
				if !s.staleEntry(string(e.kv.Key), r.GetResponseRange().GetKvs()) {
					continue
				}
				report.Stale++
				dels = append(dels, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(string(e.kv.Key)), "=", e.kv.ModRevision)}, []clientv3.Op{clientv3.OpDelete(string(e.kv.Key))}, nil))
			}
			if fix {
				n, err := s.applyFixes(c, dels, 1)
				report.Fixed += n
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	return report, err
}

// staleEntry reports whether the index entry at key indexes no session,
// its session's key holding kvs: nothing, a tombstone, or a session that
// opens and whose entry is another. An expired session keeps its entry
// until its lease ends; one that does not open cannot be checked and
// keeps it too.
func (s *EtcdStore) staleEntry(key string, kvs []*mvccpb.KeyValue) bool {
	if len(kvs) == 0 || isTombstone(kvs[0].Value) {
		return true
	}
	if _, err := s.plain(string(kvs[0].Key), kvs[0].Value); err != nil {
		return false
	}
	return s.entryOf(kvs[0]) != key
}

// applyFixes makes txns, nested Txns of ops operations and compares
// each, in Txns within etcd's default --max-txn-ops, and returns how many
// succeeded.
func (s *EtcdStore) applyFixes(c call, txns []clientv3.Op, ops int) (int, error) {
	n := 0
	per := maxTxnOps / (ops + 1)
	for start := 0; start < len(txns); start += per {
		batch := txns[start:min(start+per, len(txns))]
		resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			return s.client.Txn(ctx).Then(batch...).Commit()
		})
		if err != nil {
			return n, err
		}
		for _, r := range resp.Responses {
			if r.GetResponseTxn().Succeeded {
				n++
			}
		}
	}
	return n, nil
}
