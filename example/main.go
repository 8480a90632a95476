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
// On a cluster with TLS and auth, give the CA that signs its servers'
// certificates, a client certificate and key if it asks for one, https://
// URLs and an etcd user whose role may read and write the sessions'
// prefix and their index (README, Authentication), its password in
// ETCD_PASSWORD (or -password):
//
//	ETCD_PASSWORD=... go run ./example -etcd https://10.0.0.1:2379 \
//		-cacert ca.pem -cert client.pem -key client-key.pem -user app
//
// On a cluster that holds only sessions and compacts nothing itself,
// -compact 5m makes the copies compact it, one of them every 5 minutes.
//
// -max-sessions 1 lets each user be logged in on one browser at a time,
// across all the copies: a login on a second browser ends the first's
// session, whose next visit to / says why, or with -on-max-sessions
// refuse is answered 409 "too many devices" while the first stays.
//
//	go run ./example -max-sessions 1
//
// A browser's / follows /events, a server-sent event stream of its own
// session fed by the app's one consumer of the store's events: when the
// session ends elsewhere (a logout everywhere, the session limit, its
// expiry) the open page says "You were signed out" and why, at once, with
// no reload.
//
// Routes:
//
//	/          what the session holds, or why it ended
//	/put       store the form value "m" in the session, or a greeting
//	/get       show the message
//	/count     count the session's requests: a write on every request
//	/login     log in as the form value "name", under a new token
//	           (409 when -max-sessions refuses it)
//	/logout    destroy the session
//	/sessions  count the live sessions
//	/devices   the sessions of the user logged in
//	/logout-everywhere  (POST) end the user's other sessions
//	/events    server-sent events: the end of this session, as it happens
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
	"strings"
	"syscall"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
)

// etcdTimeout bounds how long the app waits for etcd at startup.
const etcdTimeout = 30 * time.Second

// config is the app's configuration, from its flags.
type config struct {
	addr       string        // HTTP listen address
	endpoints  []string      // etcd client URLs; none starts an embedded etcd
	dataDir    string        // the embedded etcd's data directory
	prefix     string        // etcd key prefix of the sessions
	idle       time.Duration // scs.SessionManager.IdleTimeout
	touch      time.Duration // etcdstore.WithTouchInterval
	compact    time.Duration // etcdstore.RunCompactor's interval; 0 for none
	lifetime   time.Duration // scs.SessionManager.Lifetime
	timeout    time.Duration // etcdstore.WithTimeout
	cache      bool          // etcdstore.WithReadCache
	hashTokens bool          // scs.SessionManager.HashTokenInStore
	caCert     string        // PEM file of the CAs that sign etcd's certificates
	cert, key  string        // PEM files of the client certificate and its key
	user       string        // etcd user; none logs in as nobody
	password   string        // the etcd user's password
	wait       time.Duration // how long to wait for etcd at startup; 0: etcdTimeout
	keepAlive  time.Duration // etcdstore.WithAuthKeepAlive; 0: its default (tests set it, with a short --auth-token-ttl)
	// etcdstore.WithSessionLimit: each user's live sessions at most
	// maxSessions (0: no limit), past it limitPolicy.
	maxSessions int
	limitPolicy etcdstore.LimitPolicy
}

// limitPolicies are the values of -on-max-sessions.
var limitPolicies = map[string]etcdstore.LimitPolicy{
	"end-oldest": etcdstore.EndOldest,
	"refuse":     etcdstore.RefuseNew,
}

// passwordEnv names the environment variable that holds the etcd user's
// password when -password is empty: unlike a flag, it does not show in
// the process list.
const passwordEnv = "ETCD_PASSWORD"

// parseFlags reads the configuration from the command-line arguments.
func parseFlags(args []string, output io.Writer) (config, error) {
	var cfg config
	var endpoints, policy string
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:4000", "HTTP listen `address`")
	fs.StringVar(&endpoints, "etcd", os.Getenv("ETCD_ENDPOINTS"), "comma-separated etcd client `URLs` (default $ETCD_ENDPOINTS); none starts an embedded single-member etcd")
	fs.StringVar(&cfg.dataDir, "data", "etcd-data", "data `directory` of the embedded etcd, which one app at a time may use")
	fs.StringVar(&cfg.prefix, "prefix", etcdstore.DefaultPrefix, "etcd key `prefix` of the sessions")
	fs.DurationVar(&cfg.idle, "idle", 20*time.Minute, "a session expires after this long without a request; 0 for never")
	fs.DurationVar(&cfg.touch, "touch", 0, "a request that changes nothing writes its session again only once its expiry moves this far; 0 writes on every request (etcdstore.WithTouchInterval) (default half of -idle)")
	fs.DurationVar(&cfg.compact, "compact", 0, "compact the etcd cluster this often, taking turns with the other app servers (etcdstore.RunCompactor), for a cluster that holds only sessions; 0 for never (the embedded etcd compacts itself)")
	fs.DurationVar(&cfg.lifetime, "lifetime", 24*time.Hour, "a session expires this long after it began, however active")
	fs.BoolVar(&cfg.cache, "cache", false, "answer session reads from a watch-fed copy of the sessions in memory, still linearizable (etcdstore.WithReadCache)")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "a request fails with a 500 when etcd has not answered the session store in this long (etcdstore.WithTimeout)")
	fs.BoolVar(&cfg.hashTokens, "hash-tokens", true, "keep each session in etcd under a SHA-256 digest of its token, not the token, so that whoever reads etcd or a backup of it cannot present a live session's token (scs.SessionManager.HashTokenInStore); changing it loses the sessions stored")
	fs.StringVar(&cfg.caCert, "cacert", "", "PEM `file` of the CA certificates that verify the etcd servers' certificates, for https:// -etcd URLs (default the system's)")
	fs.StringVar(&cfg.cert, "cert", "", "PEM `file` of the client certificate to present to etcd, with -key")
	fs.StringVar(&cfg.key, "key", "", "PEM `file` of the private key of -cert")
	fs.StringVar(&cfg.user, "user", "", "etcd user `name` to log in as, with -password, when etcd has auth enabled")
	fs.StringVar(&cfg.password, "password", "", "`password` of -user (default $"+passwordEnv+", read when -password is empty; the environment does not show in the process list)")
	fs.IntVar(&cfg.maxSessions, "max-sessions", 0, "each user's live sessions at most `N`, across all app servers; 0 for no limit (etcdstore.WithSessionLimit)")
	fs.StringVar(&policy, "on-max-sessions", "end-oldest", "the `policy` of a login past -max-sessions: end-oldest ends the user's oldest session, whose browser is told why; refuse answers the new login 409 \"too many devices\"")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["touch"] {
		cfg.touch = cfg.idle / 2
	}
	if cfg.password == "" {
		cfg.password = os.Getenv(passwordEnv)
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	p, ok := limitPolicies[policy]
	if !ok {
		return config{}, fmt.Errorf("-on-max-sessions %q: want end-oldest or refuse", policy)
	}
	cfg.limitPolicy = p
	for _, ep := range strings.Split(endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			cfg.endpoints = append(cfg.endpoints, ep)
		}
	}
	if err := cfg.check(); err != nil {
		return config{}, err
	}
	if err := cfg.checkEtcd(set["password"]); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// check checks the durations, the prefix and the session limit.
func (cfg config) check() error {
	if err := etcdstore.CheckPrefix(cfg.prefix); err != nil {
		return fmt.Errorf("-prefix: %w", err)
	}
	switch {
	case cfg.lifetime <= 0:
		return errors.New("-lifetime must be positive")
	case cfg.idle < 0:
		return errors.New("-idle must not be negative")
	case cfg.compact < 0:
		return errors.New("-compact must not be negative")
	case cfg.touch < 0:
		return errors.New("-touch must not be negative")
	case cfg.timeout <= 0:
		return errors.New("-timeout must be positive")
	case cfg.maxSessions < 0:
		return errors.New("-max-sessions must not be negative: 0 for no limit")
	case cfg.idle > 0 && cfg.touch >= cfg.idle:
		return fmt.Errorf("-touch %v must be less than -idle %v: an active session would expire a fixed time after its last write", cfg.touch, cfg.idle)
	}
	return nil
}

// checkEtcd checks the TLS and auth flags against the endpoints;
// passwordFlag says whether -password was given.
func (cfg config) checkEtcd(passwordFlag bool) error {
	useTLS := cfg.caCert != "" || cfg.cert != "" || cfg.key != ""
	switch {
	case len(cfg.endpoints) == 0 && (useTLS || cfg.user != "" || passwordFlag):
		return errors.New("-cacert, -cert, -key, -user and -password are for a cluster given with -etcd: the embedded etcd serves plain http on loopback, with no auth")
	case (cfg.cert == "") != (cfg.key == ""):
		return errors.New("-cert and -key go together: a client certificate and its private key")
	case passwordFlag && cfg.user == "":
		return errors.New("-password needs -user")
	case strings.Contains(cfg.user, ":"):
		return fmt.Errorf("-user takes the name alone; give the password with -password or %s", passwordEnv)
	case cfg.user != "" && cfg.password == "":
		return fmt.Errorf("-user %s needs a password: -password or %s", cfg.user, passwordEnv)
	}
	for _, ep := range cfg.endpoints {
		if useTLS && strings.HasPrefix(ep, "http://") {
			return fmt.Errorf("-etcd %s: with -cacert, -cert or -key the URLs are https:// (etcd's client talks plain http to an http:// URL, TLS or not)", ep)
		}
	}
	return nil
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

	asUser := ""
	if cfg.user != "" {
		asUser = fmt.Sprintf(" as user %q", cfg.user)
	}
	log.Printf("sessions in etcd at %s under prefix %q%s", strings.Join(conn.client.Endpoints(), ","), cfg.prefix, asUser)
	opts := []etcdstore.Option{etcdstore.WithTouchInterval(cfg.touch), etcdstore.WithTimeout(cfg.timeout),
		etcdstore.WithPrincipal(exampleapp.PrincipalKey), etcdstore.WithAuthKeepAlive(cfg.keepAlive)}
	if cfg.cache {
		opts = append(opts, etcdstore.WithReadCache())
	}
	if cfg.maxSessions > 0 {
		opts = append(opts, etcdstore.WithSessionLimit(cfg.maxSessions, cfg.limitPolicy))
		log.Printf("each user's live sessions at most %d; a login past the limit: %v", cfg.maxSessions, cfg.limitPolicy)
	}
	store := etcdstore.NewWithPrefix(conn.client, cfg.prefix, opts...)
	defer store.Close()
	if cfg.cache {
		logReadCache(ctx, store, cfg.timeout)
	}
	sm := exampleapp.NewSessionManager(store, cfg.idle, cfg.lifetime)
	sm.HashTokenInStore = cfg.hashTokens
	// The consumer of the store's events and the /events streams end with
	// eventsCtx, ended before Shutdown, which would wait for the streams.
	eventsCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	app := exampleapp.New(sm, exampleapp.WithEvents(eventsCtx))
	srv := &http.Server{Handler: withMetrics(app, store), ReadHeaderTimeout: 10 * time.Second}

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
	stopEvents()
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

// logReadCache logs, once, whether the read cache (-cache) serves reads,
// or why it is off, waiting for it at most wait: it turns itself off on
// an etcd it cannot trust without a word of its own.
func logReadCache(ctx context.Context, store *etcdstore.EtcdStore, wait time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	switch err := store.ReadCacheReady(ctx); {
	case err == nil:
		log.Print("read cache on: sessions are read from memory")
	case errors.Is(err, etcdstore.ErrReadCacheOff):
		log.Printf("%v (-cache has no effect)", err)
	default:
		log.Printf("read cache not in sync after %v, reads go to etcd meanwhile: %v", wait, err)
	}
}
