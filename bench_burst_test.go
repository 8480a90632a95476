package etcdstore_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
)

// A burst is what a page that fires many requests at once with one cookie
// makes of its session: with SCS's IdleTimeout, every request Finds and
// Commits it. The burst benchmarks time the same work on one session and
// spread over as many sessions as goroutines, interleaved in the same run
// (the order alternating by iteration), so that the ratio of their times
// is what one session's burst costs beyond the same load of independent
// users.
const (
	// burstGoroutines make burstOps Commit+Find each in BenchmarkBurst.
	burstGoroutines = 32
	burstOps        = 20
	// scsBurstRequests is how many requests BenchmarkSCSBurst sends at
	// once.
	scsBurstRequests = 30
)

// BenchmarkBurst times burstGoroutines goroutines making burstOps
// Commit+Find each of a 256 B session: all on one token, and on a token
// each, with batching on and off. ns/op is one burst on one token;
// time-ratio is its time over that of the burst on a token each (the
// target is at most 1.5); p50-µs and p99-µs are the percentiles of one
// Commit+Find on one token, tokens-p50-µs and tokens-p99-µs on a token
// each.
func BenchmarkBurst(b *testing.B) {
	for _, batching := range []bool{true, false} {
		b.Run("batching="+strconv.FormatBool(batching), func(b *testing.B) {
			client, ctx := benchServer(b)
			store := etcdstore.New(client, etcdstore.WithBatching(batching))
			value := newValue(256)
			one, many := newTokens(1), newTokens(burstGoroutines)
			// The sessions exist, as a page's session does.
			if err := fill(len(many), func(i int) error {
				return store.CommitCtx(ctx, many[i], value, time.Now().Add(sessionLifetime))
			}); err != nil {
				b.Fatal(err)
			}
			if err := store.CommitCtx(ctx, one[0], value, time.Now().Add(sessionLifetime)); err != nil {
				b.Fatal(err)
			}
			burst := func(tokens []string, durs []time.Duration) (time.Duration, error) {
				var g errgroup.Group
				start := time.Now()
				for i := range burstGoroutines {
					token := tokens[i%len(tokens)]
					g.Go(func() error {
						for j := range burstOps {
							t0 := time.Now()
							if err := store.CommitCtx(ctx, token, value, time.Now().Add(sessionLifetime)); err != nil {
								return fmt.Errorf("commit: %w", err)
							}
							if _, found, err := store.FindCtx(ctx, token); err != nil || !found {
								return fmt.Errorf("find after commit: found %v, %v", found, err)
							}
							durs[i*burstOps+j] = time.Since(t0)
						}
						return nil
					})
				}
				err := g.Wait()
				return time.Since(start), err
			}
			var oneTime, manyTime time.Duration
			var oneDurs, manyDurs []time.Duration
			durs := make([]time.Duration, burstGoroutines*burstOps)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k := range 2 {
					onOne := (i+k)%2 == 0
					tokens := many
					if onOne {
						tokens = one
					} else {
						b.StopTimer()
					}
					took, err := burst(tokens, durs)
					if err != nil {
						b.Fatal(err)
					}
					if onOne {
						oneTime += took
						oneDurs = append(oneDurs, durs...)
					} else {
						manyTime += took
						manyDurs = append(manyDurs, durs...)
						b.StartTimer()
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(oneTime)/float64(manyTime), "time-ratio")
			reportPercentiles(b, "", oneDurs, 50, 99)
			reportPercentiles(b, "tokens-", manyDurs, 50, 99)
		})
	}
}

// BenchmarkSCSBurst serves the example app through SCS with IdleTimeout
// and HashTokenInStore, as exampleapp does, and sends scsBurstRequests
// requests at once: all with one session's cookie, and each with a
// session of its own. ns/op is one burst of one session; p99-ratio is the
// 99th percentile of a request's time in it over that with a session each
// (the target is at most 2); p50-µs and p99-µs are one session's,
// sessions-p50-µs and sessions-p99-µs a session each's.
func BenchmarkSCSBurst(b *testing.B) {
	srv := etcdtest.Start(b, etcdtest.WithFsync())
	sm := exampleapp.NewSessionManager(etcdstore.New(srv.Client(b)), time.Hour, sessionLifetime)
	app := httptest.NewServer(exampleapp.New(sm))
	b.Cleanup(app.Close)
	transport := &http.Transport{MaxIdleConnsPerHost: 2 * scsBurstRequests}
	b.Cleanup(transport.CloseIdleConnections)
	browser := func() *http.Client {
		jar, err := cookiejar.New(nil)
		if err != nil {
			b.Fatal(err)
		}
		c := &http.Client{Jar: jar, Transport: transport, Timeout: time.Minute}
		if err := get(c, app.URL+"/put?m=hello"); err != nil {
			b.Fatal(err)
		}
		return c
	}
	one := []*http.Client{browser()}
	var many []*http.Client
	for range scsBurstRequests {
		many = append(many, browser())
	}
	burst := func(clients []*http.Client, durs []time.Duration) error {
		var g errgroup.Group
		for i := range scsBurstRequests {
			g.Go(func() error {
				start := time.Now()
				err := get(clients[i%len(clients)], app.URL+"/get")
				durs[i] = time.Since(start)
				return err
			})
		}
		return g.Wait()
	}
	var oneDurs, manyDurs []time.Duration
	durs := make([]time.Duration, scsBurstRequests)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range 2 {
			onOne := (i+k)%2 == 0
			clients := many
			if onOne {
				clients = one
			} else {
				b.StopTimer()
			}
			if err := burst(clients, durs); err != nil {
				b.Fatal(err)
			}
			if onOne {
				oneDurs = append(oneDurs, durs...)
			} else {
				manyDurs = append(manyDurs, durs...)
				b.StartTimer()
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(oneDurs, 99))/float64(percentile(manyDurs, 99)), "p99-ratio")
	reportPercentiles(b, "", oneDurs, 50, 99)
	reportPercentiles(b, "sessions-", manyDurs, 50, 99)
}

// get requests url with c and fails unless the answer is 200.
func get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %q", url, resp.StatusCode, body)
	}
	return nil
}
