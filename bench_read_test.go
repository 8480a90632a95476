package etcdstore_test

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkFind compares Find of a live session with a raw linearizable
// Get of its key, over hotSessions sessions.
func BenchmarkFind(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			keys := keysOf(tokens)
			value := newValue(size.n)
			store := etcdstore.New(client)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}

			storeOp := findOp(ctx, "store", store, tokens)
			rawOp := rawGetOp(ctx, client, keys)
			s, base := interleave(b, nil, storeOp, rawOp)
			reportBaselines(b, s, []contender{rawOp}, base)
		})
	}
}

// findOp is a contender that finds one of tokens, which must be live,
// through store.
func findOp(ctx context.Context, name string, store *etcdstore.EtcdStore, tokens []string) contender {
	return contender{name, func(i int) error {
		_, found, err := store.FindCtx(ctx, tokens[i%len(tokens)])
		if err == nil && !found {
			err = fmt.Errorf("find %q: not found", tokens[i%len(tokens)])
		}
		return err
	}}
}

// rawGetOp is the raw linearizable Get of one of keys, which must exist.
func rawGetOp(ctx context.Context, client *clientv3.Client, keys []string) contender {
	return contender{"raw-get", func(i int) error {
		resp, err := client.Get(ctx, keys[i%len(keys)])
		if err == nil && len(resp.Kvs) != 1 {
			err = fmt.Errorf("get %q: %d keys, want 1", keys[i%len(keys)], len(resp.Kvs))
		}
		return err
	}}
}

// hasGetStream says whether client has GetStream, which etcd's client
// has from 3.7 on.
func hasGetStream(client *clientv3.Client) bool {
	return reflect.ValueOf(client).MethodByName("GetStream").IsValid()
}

// getStream reads the keys under prefix with client.GetStream(ctx,
// prefix, clientv3.WithPrefix()), handing each chunk to each, and returns
// the stream's error. It calls GetStream by reflection, so that the
// benchmarks build with go.mod's etcd 3.5 client too: the channel's
// elements are clientv3.RangeStreamResponse, a *pb.RangeResponse and an
// Err method on its pointer.
func getStream(ctx context.Context, client *clientv3.Client, prefix string, each func(*pb.RangeResponse)) error {
	out := reflect.ValueOf(client).MethodByName("GetStream").Call([]reflect.Value{
		reflect.ValueOf(ctx), reflect.ValueOf(prefix), reflect.ValueOf(clientv3.WithPrefix()),
	})
	if err, _ := out[1].Interface().(error); err != nil {
		return err
	}
	for {
		v, ok := out[0].Recv()
		if !ok {
			return nil
		}
		resp := reflect.New(v.Type()) // Err has a pointer receiver
		resp.Elem().Set(v)
		if err, _ := resp.MethodByName("Err").Call(nil)[0].Interface().(error); err != nil {
			return err
		}
		each(v.FieldByName("RangeResponse").Interface().(*pb.RangeResponse))
	}
}

// BenchmarkAll compares All over many live sessions of 256 B with raw
// reads of the prefix that build the same map: raw-paged in pages of the
// store's page size at one revision, as the store reads; raw-stream with
// etcd 3.7's RangeStream (clientv3 GetStream, left out with an older
// client), which sends the range in chunks; and raw-single in one
// unlimited Get. The calls run one at a time, the contenders in turn.
// result-MB is the bytes of tokens and values in the result, the floor
// of any All. After the timed calls, one more call of each contender
// measures memory (see heapOf): peak-heap-MB is how much the process
// heap, client and embedded server alike, grew at most during the store's
// call, retained-MB how much of it the result holds; <name>-peak-heap-MB
// and <name>-retained-MB are the baselines'.
// The 100k case is left out of -short runs.
func BenchmarkAll(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			if n > 10_000 && testing.Short() {
				b.Skip("100k sessions take too long to commit for -short")
			}
			client, ctx := benchServer(b)
			store := etcdstore.New(client)
			prefix := etcdstore.DefaultPrefix
			value := newValue(256)
			tokens := newTokens(n)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(n, func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			const pageSize = 1000 // the store's default

			contenders := []allContender{
				{"store", func() (map[string][]byte, error) { return store.AllCtx(ctx) }},
				{"raw-paged", func() (map[string][]byte, error) {
					m := make(map[string][]byte)
					var rev int64
					from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
					for {
						resp, err := client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithRev(rev))
						if err != nil {
							return nil, err
						}
						rev = resp.Header.Revision
						for _, kv := range resp.Kvs {
							m[string(kv.Key[len(prefix):])] = kv.Value
						}
						if !resp.More || len(resp.Kvs) == 0 {
							return m, nil
						}
						from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
					}
				}},
				{"raw-stream", func() (map[string][]byte, error) {
					ctx, cancel := context.WithCancel(ctx)
					defer cancel()
					m := make(map[string][]byte)
					err := getStream(ctx, client, prefix, func(resp *pb.RangeResponse) {
						for _, kv := range resp.Kvs {
							m[string(kv.Key[len(prefix):])] = kv.Value
						}
					})
					return m, err
				}},
				{"raw-single", func() (map[string][]byte, error) {
					resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
					if err != nil {
						return nil, err
					}
					m := make(map[string][]byte, len(resp.Kvs))
					for _, kv := range resp.Kvs {
						m[string(kv.Key[len(prefix):])] = kv.Value
					}
					return m, nil
				}},
			}
			if !hasGetStream(client) {
				b.Logf("raw-stream left out: etcd client %s has no GetStream (etcd 3.7 and later)", version.Version)
				contenders = slices.DeleteFunc(contenders, func(c allContender) bool { return c.name == "raw-stream" })
			}
			// One untimed call each, so that no contender pays for a
			// cold start.
			for _, c := range contenders {
				if _, err := c.all(); err != nil {
					b.Fatal(err)
				}
			}

			samples := make([]sample, len(contenders))
			var resultBytes uint64
			// b.Loop runs this function once, so the sessions are
			// committed once; the timer runs during the store's calls
			// only.
			b.ReportAllocs()
			for round := 0; b.Loop(); round++ {
				b.StopTimer()
				for k := range contenders {
					c := (round + k) % len(contenders)
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					mallocs := ms.Mallocs
					if c == 0 {
						b.StartTimer()
					}
					start := time.Now()
					m, err := contenders[c].all()
					samples[c].elapsed += time.Since(start)
					if c == 0 {
						b.StopTimer()
					}
					runtime.ReadMemStats(&ms)
					samples[c].mallocs += ms.Mallocs - mallocs
					samples[c].n++
					if err != nil {
						b.Fatalf("%s: %v", contenders[c].name, err)
					}
					if len(m) != n {
						b.Fatalf("%s: read %d sessions, want %d", contenders[c].name, len(m), n)
					}
					if c == 0 {
						resultBytes = 0
						for k, v := range m {
							resultBytes += uint64(len(k) + len(v))
						}
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(resultBytes)/(1<<20), "result-MB")
			var baselines []contender
			for i, c := range contenders {
				peak, retained, err := heapOf(c.all)
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				prefix := ""
				if i > 0 {
					prefix = c.name + "-"
					baselines = append(baselines, contender{name: c.name})
				}
				b.ReportMetric(float64(peak)/(1<<20), prefix+"peak-heap-MB")
				b.ReportMetric(float64(retained)/(1<<20), prefix+"retained-MB")
			}
			reportBaselines(b, samples[0], baselines, samples[1:])
		})
	}
}
