package etcdstore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/naive"
)

// A deleted session stays deleted while requests that loaded it are in
// flight. With SCS's IdleTimeout every request commits its session at its
// end, so a store that writes blindly brings it back.

const (
	// inFlightClients send requests with one session's cookie at once.
	inFlightClients = 6
	// inFlightRequests is how many requests each of them sends per trial.
	inFlightRequests = 10
	// deleteAfter is how many requests have completed when the session is
	// deleted: the rest start after the delete, or are in flight.
	deleteAfter = 18
)

// newStoreFunc makes one app server's store, with a client of its own.
type newStoreFunc func(c *clientv3.Client, prefix string) scs.Store

func etcdStoreFunc(c *clientv3.Client, prefix string) scs.Store {
	return etcdstore.NewWithPrefix(c, prefix)
}

func naiveStoreFunc(c *clientv3.Client, prefix string) scs.Store {
	return &naive.Store{Client: c, Prefix: prefix}
}

// deleteRace sets up three app servers on one etcd and prefix, each with
// its own client and store made by newStore, with an IdleTimeout. Each
// trial starts a session, sends requests with its cookie from
// inFlightClients goroutines to all three servers in turn, and deletes the
// session through a fourth store, with its own client, in the middle, as
// a logout on another device would. It returns after the first session
// that is back in etcd once the requests have ended, if stopAtFirst, or
// after trials trials, and reports how many came back.
func deleteRace(t *testing.T, newStore newStoreFunc, trials int, stopAtFirst bool) (back, ran int) {
	t.Helper()
	srv := etcdtest.Start(t)
	prefix := fmt.Sprintf("delete-race:%s:", t.Name())
	var apps []*appServer
	for range 3 {
		app := newAppServer(t, newStore(srv.Client(t), prefix))
		app.sm.IdleTimeout = time.Hour
		apps = append(apps, app)
	}
	deleter := newStore(srv.Client(t), prefix)
	check := srv.Client(t)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: inFlightClients},
	}
	t.Cleanup(client.CloseIdleConnections)

	for ran < trials && !(stopAtFirst && back > 0) {
		ran++
		cookie := newSessionCookie(t, client, apps[0])
		// The token as the stores see it (HashTokenInStore).
		token := etcdstore.StoreToken(apps[0].sm, cookie.Value)
		var done atomic.Int64
		deleted := make(chan struct{})
		var wg sync.WaitGroup
		for g := range inFlightClients {
			wg.Go(func() {
				for i := range inFlightRequests {
					app := apps[(g+i)%len(apps)]
					req, _ := http.NewRequest(http.MethodGet, app.url+"/get", nil)
					req.AddCookie(cookie)
					resp, err := client.Do(req)
					if err != nil {
						t.Errorf("GET /get: %v", err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if done.Add(1) == deleteAfter {
						if err := deleter.Delete(token); err != nil {
							t.Errorf("delete: %v", err)
						}
						close(deleted)
					}
				}
			})
		}
		wg.Wait()
		<-deleted
		if got := sessionKeys(t, check, prefix); len(got) > 0 {
			back++
			// Clean up for the next trial, through a client with no
			// memory of the token.
			if _, err := check.Delete(etcdtest.Context(t, 30*time.Second), prefix, clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return back, ran
}

// newSessionCookie starts a session on app and returns its cookie.
func newSessionCookie(t *testing.T, client *http.Client, app *appServer) *http.Cookie {
	t.Helper()
	resp, err := client.Get(app.url + "/put?m=hello")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == app.sm.Cookie.Name && c.Value != "" {
			return &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	t.Fatal("/put set no session cookie")
	return nil
}

// TestDeleteSticksUnderRequestsInFlight: in 100 trials, no deleted session
// comes back.
func TestDeleteSticksUnderRequestsInFlight(t *testing.T) {
	t.Parallel()
	back, ran := deleteRace(t, etcdStoreFunc, 100, false)
	t.Logf("%d of %d deleted sessions back", back, ran)
	if back > 0 {
		t.Fatalf("%d of %d deleted sessions came back", back, ran)
	}
}

// TestDeleteRaceCatchesBlindWrites: the same race with the naive store,
// which writes blindly as github.com/alexedwards/scs/etcdstore does,
// brings deleted sessions back, so TestDeleteSticksUnderRequestsInFlight
// can fail. Under -short it stops at the first.
func TestDeleteRaceCatchesBlindWrites(t *testing.T) {
	t.Parallel()
	back, ran := deleteRace(t, naiveStoreFunc, 100, testing.Short())
	t.Logf("%d of %d deleted sessions back", back, ran)
	if back == 0 {
		t.Fatalf("no deleted session came back in %d trials with blind writes: the race is not reproduced", ran)
	}
}

// TestIterateDoesNotResurrect: SCS's Iterate hands each session from All
// to a callback that may commit it; a session deleted elsewhere before
// the callback commits stays deleted, whether the store remembers the
// token (its commit compares the revision All read) or forgot it past
// WithRememberedTokens (its commit finds the tombstone).
func TestIterateDoesNotResurrect(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	for _, tt := range []struct {
		name       string
		remembered int
	}{
		{"within the bound", 0},
		{"past the bound", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := fmt.Sprintf("iterate:%s:", t.Name())
			store := etcdstore.NewWithPrefix(srv.Client(t), prefix, etcdstore.WithRememberedTokens(tt.remembered))
			deleter := etcdstore.NewWithPrefix(srv.Client(t), prefix)
			expiry := time.Now().Add(time.Hour)
			for i := range 3 {
				data, _ := scs.GobCodec{}.Encode(expiry, map[string]any{"n": i})
				if err := deleter.Commit(fmt.Sprint("tok", i), data, expiry); err != nil {
					t.Fatal(err)
				}
			}
			sm := scs.New()
			sm.Store = store
			err := sm.Iterate(context.Background(), func(ctx context.Context) error {
				if err := deleter.Delete(sm.Token(ctx)); err != nil {
					return err
				}
				sm.Put(ctx, "seen", true)
				_, _, err := sm.Commit(ctx)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := sessionKeys(t, srv.Client(t), prefix); len(got) > 0 {
				t.Fatalf("after Iterate deleted and committed every session, etcd holds %q, want none of them", got)
			}
		})
	}
}
