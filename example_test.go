package etcdstore_test

import (
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
)

// An SCS session manager whose sessions live in etcd, shared by every app
// server that uses the same cluster and prefix.
func Example() {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://127.0.0.1:2379"},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	sessionManager := scs.New()
	sessionManager.Store = etcdstore.New(client)
	sessionManager.IdleTimeout = 20 * time.Minute

	mux := http.NewServeMux()
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		sessionManager.Put(r.Context(), "message", "Hello from a session!")
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, sessionManager.GetString(r.Context(), "message"))
	})
	log.Fatal(http.ListenAndServe(":4000", sessionManager.LoadAndSave(mux)))
}

// Several apps on one etcd cluster each keep their sessions under a
// prefix of their own. No prefix may be a prefix of another: end each
// with a separator.
func ExampleNewWithPrefix() {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	shop := scs.New()
	shop.Store = etcdstore.NewWithPrefix(client, "shop:session:")

	admin := scs.New()
	admin.Store = etcdstore.NewWithPrefix(client, "admin:session:",
		// Sessions that expire within the same 5 minutes share a lease.
		etcdstore.WithLeaseBucket(5*time.Minute))
}
