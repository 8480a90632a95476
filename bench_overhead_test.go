package etcdstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/naive"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkFootprint commits 100k sessions of 256 B that expire in 24 h,
// each to a new token, on a fresh server, with the store and with the
// naive Grant-then-Put, and reports what the server holds afterwards: its
// live leases and its database size (DbSize, and DbSizeInUse, the part
// that is not free pages). ns/op is the time of the 100k commits. Left out
// of -short runs.
func BenchmarkFootprint(b *testing.B) {
	if testing.Short() {
		b.Skip("100k sessions take too long to commit for -short")
	}
	const n = 100_000
	value := newValue(256)
	for _, c := range []struct {
		name   string
		commit func(*clientv3.Client) func(ctx context.Context, token string, b []byte, expiry time.Time) error
	}{
		{"naive", func(c *clientv3.Client) func(context.Context, string, []byte, time.Time) error {
			return (&naive.Store{Client: c, Prefix: etcdstore.DefaultPrefix}).CommitCtx
		}},
		{"store", func(c *clientv3.Client) func(context.Context, string, []byte, time.Time) error {
			return etcdstore.New(c).CommitCtx
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := etcdtest.Context(b, benchTimeout)
			var leases int
			var dbSize, dbInUse int64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				srv := etcdtest.Start(b, etcdtest.WithFsync())
				client := etcdtest.NewClient(b, clientv3.Config{Endpoints: srv.Endpoints()})
				commit := c.commit(client)
				tokens := newTokens(n)
				b.StartTimer()
				if err := fill(n, func(i int) error { return commit(ctx, tokens[i], value, time.Now().Add(sessionLifetime)) }); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				leases = etcdtest.Leases(b, client)
				st, err := client.Status(ctx, srv.Endpoints()[0])
				if err != nil {
					b.Fatal(err)
				}
				dbSize, dbInUse = st.DbSize, st.DbSizeInUse
				srv.Stop()
				b.StartTimer()
			}
			b.ReportMetric(float64(leases), "leases")
			b.ReportMetric(float64(dbSize)/(1<<20), "db-MB")
			b.ReportMetric(float64(dbInUse)/(1<<20), "db-inuse-MB")
		})
	}
}

// BenchmarkClientOverhead measures what the store adds to each etcd call
// on the client: the same calls as BenchmarkCommit, BenchmarkFind and
// BenchmarkDelete, on one goroutine, with etcd's KV and lease calls
// answered at once from memory by stubs that allocate nothing. So ns/op
// and allocs/op are the caller's own work, and allocs-over-raw-put is
// exactly the allocations the store makes beyond the raw call given a
// ready key and value string. The -from-token baselines are the raw call
// as a caller holding a token and SCS's []byte data must make it, building
// the key and converting the value. The store commits a session it wrote
// before, so its Commit is the conditional Txn of
// raw-conditional-txn-from-token, and its Delete the Put of
// raw-tombstone-put.
func BenchmarkClientOverhead(b *testing.B) {
	kv := newStubKV()
	client := clientv3.NewCtxClient(context.Background())
	b.Cleanup(func() { client.Close() })
	client.KV = kv
	client.Lease = &stubLease{}
	store := etcdstore.New(client)
	ctx := context.Background()
	token := newToken()
	key := etcdstore.DefaultPrefix + token
	const lease = clientv3.LeaseID(1)
	expiry := time.Now().Add(sessionLifetime)

	for _, size := range valueSizes {
		value := newValue(size.n)
		rawValue := string(value)
		// What Find reads back: the value as the store wrote it.
		kv.record = true
		if err := store.CommitCtx(ctx, token, value, expiry); err != nil {
			b.Fatal(err)
		}
		kv.record = false

		b.Run("Commit/"+size.name, func(b *testing.B) {
			var raw, fromToken, guarded sample
			b.Run("raw-put", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Put(ctx, key, rawValue, clientv3.WithLease(lease))
					return err
				})
			})
			b.Run("raw-put-from-token", func(b *testing.B) {
				fromToken = runSerial(b, func() error {
					_, err := client.Put(ctx, etcdstore.DefaultPrefix+token, string(value), clientv3.WithLease(lease))
					return err
				})
			})
			b.Run("raw-conditional-txn-from-token", func(b *testing.B) {
				guarded = runSerial(b, func() error {
					key := etcdstore.DefaultPrefix + token
					_, err := client.Txn(ctx).
						If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
						Then(clientv3.OpPut(key, string(value), clientv3.WithLease(lease))).
						Else(clientv3.OpGet(key)).
						Commit()
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runSerial(b, func() error { return store.CommitCtx(ctx, token, value, expiry) })
				reportOverhead(b, s, raw, "raw-put")
				reportOverhead(b, s, fromToken, "raw-put-from-token")
				reportOverhead(b, s, guarded, "raw-conditional-txn-from-token")
			})
		})
		b.Run("Find/"+size.name, func(b *testing.B) {
			var raw, fromToken sample
			b.Run("raw-get", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Get(ctx, key)
					return err
				})
			})
			b.Run("raw-get-from-token", func(b *testing.B) {
				fromToken = runSerial(b, func() error {
					_, err := client.Get(ctx, etcdstore.DefaultPrefix+token)
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runSerial(b, func() error {
					_, found, err := store.FindCtx(ctx, token)
					if err == nil && !found {
						err = errors.New("find: not found")
					}
					return err
				})
				reportOverhead(b, s, raw, "raw-get")
				reportOverhead(b, s, fromToken, "raw-get-from-token")
			})
		})
	}
	b.Run("Delete", func(b *testing.B) {
		var raw, tomb sample
		b.Run("raw-delete", func(b *testing.B) {
			raw = runSerial(b, func() error {
				_, err := client.Delete(ctx, key)
				return err
			})
		})
		b.Run("raw-tombstone-put", func(b *testing.B) {
			tomb = runSerial(b, func() error {
				_, err := client.Put(ctx, key, "\x00ES\x01\x00\x00\x00\x00\x00\x00\x00\x00", clientv3.WithIgnoreLease())
				return err
			})
		})
		b.Run("store", func(b *testing.B) {
			s := runSerial(b, func() error { return store.DeleteCtx(ctx, token) })
			reportOverhead(b, s, raw, "raw-delete")
			reportOverhead(b, s, tomb, "raw-tombstone-put")
		})
	})
}
