package etcdstore

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyspace is the range of keys a store's sessions live in, every key
// that begins with its prefix, and how it is read: in pages of pageSize
// keys, all at the revision of the first (see prefix.go for the mapping
// of tokens to keys).
type keyspace struct {
	prefix   string
	end      string // the range end of prefix
	pageSize int64
	// betweenPages, if set, runs after each page of a list but the last;
	// tests use it to change the keyspace in the middle of a list.
	betweenPages func()
}

func newKeyspace(prefix string, pageSize int) keyspace {
	return keyspace{prefix: prefix, end: rangeEnd(prefix), pageSize: int64(pageSize)}
}

// key returns the key of token's session.
func (k keyspace) key(token string) string { return keyFor(k.prefix, token) }

// token returns the token of a key read in the range.
func (k keyspace) token(key []byte) string { return tokenFor(k.prefix, key) }

// list reads the whole range through kv at one revision, in pages, and
// hands each page to visit with the call it was read in: first for the
// first page, a call of its own for each later one. It returns the
// revision read at. If etcd compacts that revision before the last page,
// the error wraps rpctypes.ErrCompacted.
func (k keyspace) list(ctx context.Context, kv clientv3.KV, r *retrier, first call, visit func(c call, kvs []*mvccpb.KeyValue) error) (int64, error) {
	return k.listAt(ctx, kv, r, first, 0, visit)
}

// listAt is list at revision rev, or at the revision of the first page
// for 0.
func (k keyspace) listAt(ctx context.Context, kv clientv3.KV, r *retrier, first call, rev int64, visit func(c call, kvs []*mvccpb.KeyValue) error) (int64, error) {
	from := k.prefix
	for c, page := first, 0; ; c, page = r.newCall(ctx), page+1 {
		resp, err := retryValue(r, c, func(ctx context.Context) (*clientv3.GetResponse, error) {
			return kv.Get(ctx, from, clientv3.WithRange(k.end), clientv3.WithLimit(k.pageSize), clientv3.WithRev(rev))
		})
		if err != nil {
			return 0, fmt.Errorf("read from revision %d: %w", rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if err := visit(c, resp.Kvs); err != nil {
			return 0, err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = nextKey(resp.Kvs[len(resp.Kvs)-1].Key)
		if k.betweenPages != nil {
			k.betweenPages()
		}
	}
}
