package etcdstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// The examples run against one etcd member that the test binary starts on
// first use; in an app, endpoints are your cluster's client URLs.

// newClient returns a client of the examples' etcd member.
func newClient() *clientv3.Client {
	endpoints, err := etcdtest.SharedEndpoints()
	if err != nil {
		log.Fatal(err)
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	return client
}

// An SCS session manager whose sessions live in etcd: a session one app
// server commits, another finds, each with its own client and store.
func Example() {
	client := newClient()
	defer client.Close()

	server1 := scs.New()
	server1.Store = etcdstore.NewWithPrefix(client, "example:")

	// A request on the first app server starts a session.
	ctx, err := server1.Load(context.Background(), "")
	if err != nil {
		log.Fatal(err)
	}
	server1.Put(ctx, "user", "alice")
	token, _, err := server1.Commit(ctx)
	if err != nil {
		log.Fatal(err)
	}

	// The next request, with its cookie, lands on the second.
	other := newClient()
	defer other.Close()
	server2 := scs.New()
	server2.Store = etcdstore.NewWithPrefix(other, "example:")
	ctx, err = server2.Load(context.Background(), token)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(server2.GetString(ctx, "user"))
	// Output: alice
}

// Two apps on one etcd cluster keep their sessions under prefixes of
// their own, and each lists only its own. No prefix may be a prefix of
// another: end each with a separator.
func ExampleNewWithPrefix() {
	client := newClient()
	defer client.Close()

	shop := etcdstore.NewWithPrefix(client, "example-shop:session:")
	admin := etcdstore.NewWithPrefix(client, "example-admin:session:")
	expiry := time.Now().Add(time.Hour)
	for _, token := range []string{"a", "b"} {
		if err := shop.Commit(token, []byte("cart"), expiry); err != nil {
			log.Fatal(err)
		}
	}
	if err := admin.Commit("c", []byte("root"), expiry); err != nil {
		log.Fatal(err)
	}

	shopSessions, err := shop.All()
	if err != nil {
		log.Fatal(err)
	}
	adminSessions, err := admin.All()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(shopSessions), "shop sessions,", len(adminSessions), "admin session")
	// Output: 2 shop sessions, 1 admin session
}

// An ErrorFunc that tells a session too large for etcd from other store
// errors, and answers it with 413.
func ExampleErrValueTooLarge() {
	client := newClient()
	defer client.Close()

	sessionManager := scs.New()
	sessionManager.Store = etcdstore.NewWithPrefix(client, "example-large:")
	sessionManager.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		if errors.Is(err, etcdstore.ErrValueTooLarge) {
			http.Error(w, "session too large", http.StatusRequestEntityTooLarge)
			return
		}
		log.Printf("%s %s: %v", r.Method, r.URL.Path, err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		// Over etcd's default --max-request-bytes, 1.5 MiB: keep large
		// things out of the session and a key to them in it.
		sessionManager.Put(r.Context(), "file", make([]byte, 2<<20))
	})
	srv := httptest.NewServer(sessionManager.LoadAndSave(mux))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/upload")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 413 Request Entity Too Large
}

// With SCS's IdleTimeout every request commits its session. With the
// touch interval at half of it, a request that changes nothing writes
// nothing until the session's expiry has moved by the interval.
func ExampleWithTouchInterval() {
	client := newClient()
	defer client.Close()

	sessionManager := scs.New()
	sessionManager.IdleTimeout = 20 * time.Minute
	sessionManager.Store = etcdstore.NewWithPrefix(client, "example-touch:",
		etcdstore.WithTouchInterval(sessionManager.IdleTimeout/2))

	revision := func() int64 {
		resp, err := client.Get(context.Background(), "revision", clientv3.WithCountOnly())
		if err != nil {
			log.Fatal(err)
		}
		return resp.Header.Revision
	}
	// One request starts a session; ten more only read it.
	ctx, _ := sessionManager.Load(context.Background(), "")
	sessionManager.Put(ctx, "user", "alice")
	token, _, err := sessionManager.Commit(ctx)
	if err != nil {
		log.Fatal(err)
	}
	before := revision()
	for range 10 {
		ctx, err := sessionManager.Load(context.Background(), token)
		if err != nil {
			log.Fatal(err)
		}
		if _, _, err := sessionManager.Commit(ctx); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("etcd writes for 10 unchanged requests:", revision()-before)
	// Output: etcd writes for 10 unchanged requests: 0
}

// A session deleted while a request that loaded it is in flight, by a
// logout on another app server, stays deleted: the request's commit at
// its end writes nothing.
func ExampleEtcdStore_DeleteCtx() {
	client := newClient()
	defer client.Close()
	store := etcdstore.NewWithPrefix(client, "example-logout:")
	expiry := time.Now().Add(time.Hour)
	if err := store.Commit("token", []byte("session"), expiry); err != nil {
		log.Fatal(err)
	}

	// A request loads the session...
	data, _, err := store.Find("token")
	if err != nil {
		log.Fatal(err)
	}
	// ...another app server logs the user out...
	otherClient := newClient()
	defer otherClient.Close()
	if err := etcdstore.NewWithPrefix(otherClient, "example-logout:").DeleteCtx(context.Background(), "token"); err != nil {
		log.Fatal(err)
	}
	// ...and the request ends, committing what it loaded.
	if err := store.Commit("token", data, expiry); err != nil {
		log.Fatal(err)
	}
	_, found, err := store.Find("token")
	fmt.Println("found after logout:", found, err)
	// Output: found after logout: false <nil>
}

// On a cluster that holds only sessions, every app server runs the
// compactor; each interval one of them compacts etcd's history.
func ExampleRunCompactor() {
	client := newClient()
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// In an app: context.Background() and 5*time.Minute, in a goroutine.
	err := etcdstore.RunCompactor(ctx, client, 200*time.Millisecond, func(err error) { log.Print(err) })
	fmt.Println(err)

	resp, err := client.Get(context.Background(), etcdstore.CompactorKey)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("some server took an interval:", len(resp.Kvs) == 1 && resp.Kvs[0].Version >= 1)
	// Output:
	// context deadline exceeded
	// some server took an interval: true
}

// A store whose calls give up after two seconds, however long the caller's
// context lives, and what it has done, as an operator's dashboard reads it.
func ExampleWithTimeout() {
	client := newClient()
	defer client.Close()
	store := etcdstore.NewWithPrefix(client, "example-timeout:", etcdstore.WithTimeout(2*time.Second))

	if err := store.Commit("token", []byte("data"), time.Now().Add(time.Hour)); err != nil {
		log.Fatal(err)
	}
	if _, _, err := store.Find("token"); err != nil {
		log.Fatal(err)
	}
	_, _, err := store.Find("token")
	if errors.Is(err, context.DeadlineExceeded) {
		fmt.Println("etcd did not answer within 2 s") // a 500 for the user: try later
	}

	st := store.Stats()
	fmt.Printf("finds %d, commits %d, errors %+v\n", st.Finds, st.Commits, st.Errors)
	// Output:
	// finds 2, commits 1, errors {NoSpace:0 TooLarge:0 Auth:0 Corrupt:0 Canceled:0 Timeout:0 Other:0}
}

// Log a user out of every other device: with WithPrincipal, the store
// finds a user's sessions by the user ID the app put into each, and ends
// all but the current one.
func ExampleEtcdStore_DeleteByPrincipal() {
	client := newClient()
	defer client.Close()
	store := etcdstore.NewWithPrefix(client, "example-users:", etcdstore.WithPrincipal("userID"))
	sessionManager := scs.New()
	sessionManager.Store = store
	sessionManager.HashTokenInStore = true // etcd holds the tokens' digests

	// ann logs in on three devices.
	var tokens []string
	for range 3 {
		ctx, err := sessionManager.Load(context.Background(), "")
		if err != nil {
			log.Fatal(err)
		}
		sessionManager.Put(ctx, "userID", "ann")
		token, _, err := sessionManager.Commit(ctx)
		if err != nil {
			log.Fatal(err)
		}
		// The token as the store has it: its digest.
		tokens = append(tokens, etcdstore.StoreToken(sessionManager, token))
	}

	ctx := context.Background()
	sessions, err := store.FindByPrincipal(ctx, "ann")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ann's sessions:", len(sessions))

	// From the first device: "log out everywhere else".
	ended, err := store.DeleteByPrincipal(ctx, "ann", tokens[0])
	if err != nil {
		log.Fatal(err)
	}
	sessions, err = store.FindByPrincipal(ctx, "ann")
	if err != nil {
		log.Fatal(err)
	}
	_, kept := sessions[tokens[0]]
	fmt.Println("ended:", ended, "left:", len(sessions), "the current one:", kept)

	store.DeleteByPrincipal(ctx, "ann") // the example's own cleanup
	// Output:
	// ann's sessions: 3
	// ended: 2 left: 1 the current one: true
}

// Linearizable reads from memory: a store with the read cache sees at
// once what another store, on another client, committed.
func ExampleWithReadCache() {
	writerClient, readerClient := newClient(), newClient()
	defer writerClient.Close()
	defer readerClient.Close()
	writer := etcdstore.NewWithPrefix(writerClient, "example-cache:")
	reader := etcdstore.NewWithPrefix(readerClient, "example-cache:", etcdstore.WithReadCache())
	defer reader.Close() // stops the cache's watch

	if err := writer.Commit("token", []byte("fresh"), time.Now().Add(time.Hour)); err != nil {
		log.Fatal(err)
	}
	data, found, err := reader.Find("token")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(data), found)
	writer.Delete("token") // the example's own cleanup
	// Output:
	// fresh true
}

// A consumer of session events: every app server can run one, to close the
// sockets of a session logged out on another server.
func ExampleEtcdStore_Events() {
	client := newClient()
	defer client.Close()
	store := etcdstore.NewWithPrefix(client, "example-events:")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	token := fmt.Sprint("token-", time.Now().UnixNano())
	for ev, err := range store.Events(ctx, etcdstore.Position{}) {
		if err != nil {
			log.Fatal(err)
		}
		switch ev.Kind {
		case etcdstore.EventResync: // the stream began: ev.Live are the live sessions
			if err := store.Commit(token, []byte("session"), time.Now().Add(time.Hour)); err != nil {
				log.Fatal(err)
			}
		case etcdstore.EventCreated:
			fmt.Println("created")
			if err := store.Delete(ev.Token); err != nil { // another server logs it out
				log.Fatal(err)
			}
		case etcdstore.EventEnded:
			fmt.Println(ev.Reason) // close its sockets here
			return
		}
	}
	// Output:
	// created
	// logged out
}

// One consumer across the cluster, for an audit log: the app servers
// campaign in an etcd election (go.etcd.io/etcd/client/v3/concurrency);
// the leader resumes from the position it saved in etcd after each event,
// so a new leader takes over where the last one stopped, with no event
// missed or written twice.
func ExampleEtcdStore_Events_oneConsumer() {
	client := newClient()
	defer client.Close()
	app := fmt.Sprint("example-audit-", time.Now().UnixNano()) // a fresh app each run, for the example
	store := etcdstore.NewWithPrefix(client, app+":")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	session, err := concurrency.NewSession(client, concurrency.WithTTL(5))
	if err != nil {
		log.Fatal(err)
	}
	defer session.Close()
	election := concurrency.NewElection(session, app+"/leader")
	if err := election.Campaign(ctx, "app-server-1"); err != nil { // waits to lead
		log.Fatal(err)
	}

	// The position saved by the last leader, if any.
	saved := app + "/position"
	var from etcdstore.Position
	if resp, err := client.Get(ctx, saved); err != nil {
		log.Fatal(err)
	} else if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &from); err != nil {
			log.Fatal(err)
		}
	}
	token := fmt.Sprint("token-", time.Now().UnixNano())
	for ev, err := range store.Events(ctx, from) {
		if err != nil {
			log.Fatal(err)
		}
		switch {
		case ev.Kind == etcdstore.EventResync:
			// The first leader begins here; a login, for the example.
			if err := store.Commit(token, []byte("session"), time.Now().Add(time.Hour)); err != nil {
				log.Fatal(err)
			}
		case ev.Token == token:
			fmt.Println("audit:", ev.Kind) // write the audit record here
		}
		// Save the position, only while this server leads.
		pos, _ := json.Marshal(ev.Position)
		txn := client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(election.Key()), "=", election.Rev()))
		if _, err := txn.Then(clientv3.OpPut(saved, string(pos))).Commit(); err != nil {
			log.Fatal(err)
		}
		if ev.Token == token {
			break
		}
	}
	// Output: audit: created
}
