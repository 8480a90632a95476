// Command example is a web app whose sessions SCS keeps in etcd through
// etcdstore.
//
// With no etcd endpoints (-etcd, or ETCD_ENDPOINTS), it starts a
// single-member etcd inside the process, its data in -data, so sessions
// survive a restart of the app. That member compacts its history every 5
// minutes and has a 2 GiB quota (internal/embedetcd), so -data stays
// bounded under sustained load:
//
//	go run ./example
//	curl -c jar -b jar http://127.0.0.1:4000/put
//	curl -c jar -b jar http://127.0.0.1:4000/get
//
// With endpoints it is a client of that etcd cluster instead. Several
// copies on one cluster and prefix, each with its own -addr, share their
// sessions: a visitor can land on any of them.
//
//	go run ./example -etcd http://127.0.0.1:2379 -addr 127.0.0.1:4001
//
// On a cluster that holds only sessions and compacts nothing itself,
// -compact 5m makes the copies compact it, one of them every 5 minutes.
//
// Routes:
//
//	/          what the session holds
//	/put       store the form value "m" in the session, or a greeting
//	/get       show the message
//	/count     count the session's requests: a write on every request
//	/login     log in as the form value "name", under a new token
//	/logout    destroy the session
//	/sessions  count the live sessions
//	/devices   the sessions of the user logged in
//	/logout-everywhere  (POST) end the user's other sessions
//	/metrics   the session store's stats, for Prometheus
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/embedetcd"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdTimeout bounds how long the app waits for etcd at startup.
const etcdTimeout = 30 * time.Second

// config is the app's configuration, from its flags.
type config struct {
	addr      string        // HTTP listen address
	endpoints []string      // etcd client URLs; none starts an embedded etcd
	dataDir   string        // the embedded etcd's data directory
	prefix    string        // etcd key prefix of the sessions
	idle      time.Duration // scs.SessionManager.IdleTimeout
	touch     time.Duration // etcdstore.WithTouchInterval
	compact   time.Duration // etcdstore.RunCompactor's interval; 0 for none
	lifetime  time.Duration // scs.SessionManager.Lifetime
	timeout   time.Duration // etcdstore.WithTimeout
	cache     bool          // etcdstore.WithReadCache
	wait      time.Duration // how long to wait for etcd at startup; 0: etcdTimeout
}

// parseFlags reads the configuration from the command-line arguments.
func parseFlags(args []string, output io.Writer) (config, error) {
	var cfg config
	var endpoints string
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:4000", "HTTP listen `address`")
	fs.StringVar(&endpoints, "etcd", os.Getenv("ETCD_ENDPOINTS"), "comma-separated etcd client `URLs` (default $ETCD_ENDPOINTS); none starts an embedded single-member etcd")
	fs.StringVar(&cfg.dataDir, "data", "etcd-data", "data `directory` of the embedded etcd")
	fs.StringVar(&cfg.prefix, "prefix", etcdstore.DefaultPrefix, "etcd key `prefix` of the sessions")
	fs.DurationVar(&cfg.idle, "idle", 20*time.Minute, "a session expires after this long without a request; 0 for never")
	fs.DurationVar(&cfg.touch, "touch", 0, "a request that changes nothing writes its session again only once its expiry moves this far; 0 writes on every request (etcdstore.WithTouchInterval) (default half of -idle)")
	fs.DurationVar(&cfg.compact, "compact", 0, "compact the etcd cluster this often, taking turns with the other app servers (etcdstore.RunCompactor), for a cluster that holds only sessions; 0 for never (the embedded etcd compacts itself)")
	fs.DurationVar(&cfg.lifetime, "lifetime", 24*time.Hour, "a session expires this long after it began, however active")
	fs.BoolVar(&cfg.cache, "cache", false, "answer session reads from a watch-fed copy of the sessions in memory, still linearizable (etcdstore.WithReadCache)")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "a request fails with a 500 when etcd has not answered the session store in this long (etcdstore.WithTimeout)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	touchSet := false
	fs.Visit(func(f *flag.Flag) { touchSet = touchSet || f.Name == "touch" })
	if !touchSet {
		cfg.touch = cfg.idle / 2
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, ep := range strings.Split(endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			cfg.endpoints = append(cfg.endpoints, ep)
		}
	}
	if cfg.prefix == "" {
		return config{}, errors.New("-prefix must not be empty")
	}
	if cfg.lifetime <= 0 {
		return config{}, errors.New("-lifetime must be positive")
	}
	if cfg.idle < 0 {
		return config{}, errors.New("-idle must not be negative")
	}
	if cfg.compact < 0 {
		return config{}, errors.New("-compact must not be negative")
	}
	if cfg.touch < 0 {
		return config{}, errors.New("-touch must not be negative")
	}
	if cfg.timeout <= 0 {
		return config{}, errors.New("-timeout must be positive")
	}
	if cfg.idle > 0 && cfg.touch >= cfg.idle {
		return config{}, fmt.Errorf("-touch %v must be less than -idle %v: an active session would expire a fixed time after its last write", cfg.touch, cfg.idle)
	}
	return cfg, nil
}

func main() {
	log.SetFlags(0)
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		log.Print(err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

// run serves the app on cfg.addr until ctx is done.
func run(ctx context.Context, cfg config) error {
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, ln)
}

// serve serves the app on ln until ctx is done, then finishes the
// requests in flight and closes ln, the etcd client and the embedded etcd.
func serve(ctx context.Context, cfg config, ln net.Listener) error {
	conn, err := connect(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	defer conn.close()

	log.Printf("sessions in etcd at %s under prefix %q", strings.Join(conn.client.Endpoints(), ","), cfg.prefix)
	opts := []etcdstore.Option{etcdstore.WithTouchInterval(cfg.touch), etcdstore.WithTimeout(cfg.timeout),
		etcdstore.WithPrincipal(exampleapp.PrincipalKey)}
	if cfg.cache {
		opts = append(opts, etcdstore.WithReadCache())
	}
	store := etcdstore.NewWithPrefix(conn.client, cfg.prefix, opts...)
	defer store.Close()
	sm := exampleapp.NewSessionManager(store, cfg.idle, cfg.lifetime)
	srv := &http.Server{Handler: withMetrics(exampleapp.New(sm), store), ReadHeaderTimeout: 10 * time.Second}

	if cfg.compact > 0 {
		compactCtx, stopCompactor := context.WithCancel(ctx)
		compacted := make(chan struct{})
		go func() {
			defer close(compacted)
			etcdstore.RunCompactor(compactCtx, conn.client, cfg.compact, func(err error) { log.Print(err) })
		}()
		defer func() { stopCompactor(); <-compacted }()
		log.Printf("compacting etcd every %v, in turn with the other app servers", cfg.compact)
	}

	log.Printf("listening on http://%s", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var failed error
	select {
	case err := <-served:
		return err
	case failed = <-conn.failed():
		failed = fmt.Errorf("embedded etcd: %w", failed)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return errors.Join(failed, fmt.Errorf("shut down: %w", err))
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return errors.Join(failed, err)
	}
	return failed
}

// etcdConn is the app's link to etcd.
type etcdConn struct {
	client *clientv3.Client
	member *embed.Etcd // the embedded member, or nil
}

// failed returns a channel that receives the embedded member's fatal
// error, or nil (which never receives) for a remote cluster.
func (c *etcdConn) failed() <-chan error {
	if c.member == nil {
		return nil
	}
	return c.member.Err()
}

// close closes the client, then stops the embedded member.
func (c *etcdConn) close() {
	c.client.Close()
	if c.member != nil {
		c.member.Close()
	}
}

// connect returns a client of the etcd cluster at cfg.endpoints, or of a
// single-member etcd it starts in cfg.dataDir when there are none, once
// the cluster answers a read.
func connect(ctx context.Context, cfg config) (*etcdConn, error) {
	conn := &etcdConn{}
	wait := cfg.wait
	if wait <= 0 {
		wait = etcdTimeout
	}
	endpoints := cfg.endpoints
	if len(endpoints) == 0 {
		member, err := embedetcd.Start(embedetcd.Local("default", cfg.dataDir), etcdTimeout)
		if err != nil {
			return nil, err
		}
		conn.member = member
		endpoints = []string{"http://" + member.Clients[0].Addr().String()}
		abs, err := filepath.Abs(cfg.dataDir)
		if err != nil {
			abs = cfg.dataDir
		}
		log.Printf("started an embedded etcd at %s, data in %s", endpoints[0], abs)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		// Without keepalive, a connection to a member that stopped
		// answering (a dead host, a dropped link) stays open and holds
		// every request sent to it until its deadline; with it, gRPC drops
		// the connection about 12 s in (docs/reliability.md). 10 s is
		// gRPC's least.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		if conn.member != nil {
			conn.member.Close()
		}
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	conn.client = client
	// The read etcdctl's "endpoint health" makes: it needs a quorum, so
	// a cluster that answers it can serve the store.
	if conn.member == nil {
		log.Printf("waiting for etcd at %s (at most %v)", strings.Join(endpoints, ","), wait)
	}
	readyCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := client.Get(readyCtx, "health"); err != nil {
		conn.close()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("etcd at %s did not answer within %v: is it running, are these its client URLs (-etcd), and does it have a leader? (%w)", strings.Join(endpoints, ","), wait, err)
		}
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	return conn, nil
}
