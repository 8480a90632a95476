package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/embedetcd"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/tlstest"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// TestMain fails the run if a test leaves a goroutine behind: every
// server, client and embedded etcd a test starts must be stopped. The one
// exception is the cleanup goroutine of the in-memory store scs.New
// installs before newSessionManager replaces it: SCS gives no race-free
// way to stop it (memstore's StopCleanup reads a field its goroutine
// writes).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}

// startApp runs serve with cfg in the background and returns the app's
// URL and a func that stops it and waits for it to return, also called
// when the test ends.
func startApp(t *testing.T, cfg config) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, ln) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not return 30 s after its context ended")
		}
	})
	t.Cleanup(stop)
	return "http://" + ln.Addr().String(), stop
}

// The app as run from the command line: it starts an embedded etcd in its
// data directory, serves, stops cleanly when its context ends, and finds
// its sessions again when started anew on the same directory.
func TestServeKeepsSessionsAcrossRestarts(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-data", t.TempDir(), "-addr", "127.0.0.1:0", "-compact", "100ms", "-cache"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ann := webtest.New(t)

	base, stop := startApp(t, cfg)
	ann.Want(base, "/put", "stored\n")
	ann.Want(base, "/login?name=ann", "logged in as ann\n")
	stop()

	base, stop = startApp(t, cfg) // another port on the same host: the cookie still goes
	ann.Want(base, "/get", "Hello from a session!\n")
	ann.Want(base, "/sessions", "live sessions: 1\n")
	// The store's stats, for Prometheus: this run's two requests with a
	// cookie found their session, and the second listed all.
	metrics := ann.MustGet(base, "/metrics")
	for _, want := range []string{
		`etcdstore_calls_total{method="find",store="sessions"} 2`,
		`etcdstore_calls_total{method="all",store="sessions"} 1`,
		`etcdstore_call_duration_seconds_count{method="find",store="sessions"} 2`,
		`etcdstore_errors_total{kind="timeout",store="sessions"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics has no line %q:\n%s", want, metrics)
		}
	}
	// With -cache, the three reads came from the cache or, until it was
	// in sync, from etcd.
	hits, fallbacks := metricValue(t, metrics, `etcdstore_cache_reads_total{result="hit",store="sessions"}`), metricValue(t, metrics, `etcdstore_cache_reads_total{result="fallback",store="sessions"}`)
	if hits+fallbacks != 3 {
		t.Errorf("cache reads: %v hits and %v fallbacks, want 3 in all", hits, fallbacks)
	}
	stop()
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-etcd", "http://127.0.0.1:2379, http://127.0.0.1:22379,", "-prefix", "app:"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.endpoints, " "), "http://127.0.0.1:2379 http://127.0.0.1:22379"; got != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	if cfg.prefix != "app:" || cfg.addr != "127.0.0.1:4000" || cfg.dataDir != "etcd-data" {
		t.Errorf("got prefix %q addr %q data %q, want app:, the default address and data directory", cfg.prefix, cfg.addr, cfg.dataDir)
	}
	for _, args := range [][]string{
		{"-prefix", ""},
		{"-prefix", "etcdstore/"},            // covers the principal indexes
		{"-prefix", "etcdstore/principal/x"}, // under them
		{"-prefix", "etcdstore/compactor"},   // the compactor's key
		{"-lifetime", "0s"},
		{"-idle", "-1s"},
		{"-touch", "-1s"},
		{"-compact", "-1s"},
		{"-timeout", "0s"},
		{"-idle", "10m", "-touch", "10m"},
		{"extra"},
		{"-cacert", "ca.pem"}, // no -etcd: the embedded etcd has no TLS
		{"-user", "app", "-password", "pw"},
		{"-etcd", "https://127.0.0.1:2379", "-cert", "c.pem"},
		{"-etcd", "https://127.0.0.1:2379", "-user", "app:pw"},
		{"-max-sessions", "-1"},
		{"-max-sessions", "one"},
		{"-max-sessions", "1", "-on-max-sessions", "refuse-new"},
		{"-on-max-sessions", ""},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", args)
		}
	}
	// -touch follows -idle unless set.
	for _, tc := range []struct {
		args  []string
		touch time.Duration
	}{
		{nil, 10 * time.Minute},
		{[]string{"-idle", "5m"}, 150 * time.Second},
		{[]string{"-idle", "0"}, 0},
		{[]string{"-idle", "5m", "-touch", "0"}, 0},
		{[]string{"-idle", "5m", "-touch", "1m"}, time.Minute},
	} {
		if cfg, err := parseFlags(tc.args, io.Discard); err != nil || cfg.touch != tc.touch {
			t.Errorf("parseFlags(%q): touch %v, %v; want %v", tc.args, cfg.touch, err, tc.touch)
		}
	}
}

// -max-sessions is 0, no limit, unless given; -on-max-sessions takes
// end-oldest, the default, or refuse.
func TestParseFlagsSessionLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args   []string
		max    int
		policy etcdstore.LimitPolicy
	}{
		{nil, 0, etcdstore.EndOldest},
		{[]string{"-max-sessions", "1"}, 1, etcdstore.EndOldest},
		{[]string{"-max-sessions", "3", "-on-max-sessions", "end-oldest"}, 3, etcdstore.EndOldest},
		{[]string{"-max-sessions", "2", "-on-max-sessions", "refuse"}, 2, etcdstore.RefuseNew},
		{[]string{"-max-sessions", "0", "-on-max-sessions", "refuse"}, 0, etcdstore.RefuseNew},
	} {
		cfg, err := parseFlags(tc.args, io.Discard)
		if err != nil || cfg.maxSessions != tc.max || cfg.limitPolicy != tc.policy {
			t.Errorf("parseFlags(%q): max sessions %d, policy %v, %v; want %d, %v", tc.args, cfg.maxSessions, cfg.limitPolicy, err, tc.max, tc.policy)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-max-sessions", "-1"}, "-max-sessions must not be negative: 0 for no limit"},
		{[]string{"-on-max-sessions", "oldest"}, `-on-max-sessions "oldest": want end-oldest or refuse`},
	} {
		if _, err := parseFlags(tc.args, io.Discard); err == nil || err.Error() != tc.want {
			t.Errorf("parseFlags(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
}

// The example with -max-sessions 1: a second browser's login as the same
// user ends the first's session, and the first is told why; with
// -on-max-sessions refuse, the second is answered 409 and the first
// stays.
func TestServeSessionLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		policy string
		code   int    // of the second login
		first  string // the first browser's home page, from its start
	}{
		{"end-oldest", http.StatusOK, "not logged in\nyou were signed out: ended by the session limit, at "},
		{"refuse", http.StatusConflict, "logged in as ann\n"},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseFlags([]string{"-data", t.TempDir(), "-addr", "127.0.0.1:0", "-max-sessions", "1", "-on-max-sessions", tc.policy}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			base, _ := startApp(t, cfg)
			a, b := webtest.New(t), webtest.New(t)
			a.Want(base, "/login?name=ann", "logged in as ann\n")
			if code, body := b.Get(base, "/login?name=ann"); code != tc.code {
				t.Fatalf("the second login: %d %q, want %d", code, body, tc.code)
			}
			if got := a.MustGet(base, "/"); !strings.HasPrefix(got, tc.first) {
				t.Errorf("the first browser's home page %q, want it to start %q", got, tc.first)
			}
			a.Want(base, "/sessions", "live sessions: 1\n")
		})
	}
}

// The example's /events: a second login past -max-sessions 1 ends the
// first browser's session, and its open stream says so at once; a
// stream open at shutdown ends with the app, which stops cleanly.
func TestServeEvents(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-data", t.TempDir(), "-addr", "127.0.0.1:0", "-max-sessions", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	base, stop := startApp(t, cfg)
	a, b := webtest.New(t), webtest.New(t)
	a.Want(base, "/login?name=ann", "logged in as ann\n")
	stream := a.Events(base, 10*time.Second)
	b.Want(base, "/login?name=ann", "logged in as ann\n")
	var lines []string // the next event's, after the blank line that ends the retry's block
	for len(lines) < 2 {
		line, err := stream.ReadString('\n')
		if err != nil {
			t.Fatalf("A's /events after B's login: %q, %v", lines, err)
		}
		if line != "\n" {
			lines = append(lines, line)
		}
	}
	if lines[0] != "event: ended\n" || !strings.HasPrefix(lines[1], `data: {"reason":"ended by the session limit","at":"`) {
		t.Errorf("A's /events after B's login: %q, want the event ended by the session limit", lines)
	}

	b.Events(base, 10*time.Second) // open while the app stops
	start := time.Now()
	stop()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the app took %v to stop with an /events stream open", took)
	}
}

// -hash-tokens is on unless turned off; -password is empty unless given.
func TestParseFlagsDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		hash bool
	}{{nil, true}, {[]string{"-hash-tokens=false"}, false}, {[]string{"-hash-tokens"}, true}} {
		if cfg, err := parseFlags(tc.args, io.Discard); err != nil || cfg.hashTokens != tc.hash {
			t.Errorf("parseFlags(%q): hashTokens %v, %v; want %v", tc.args, cfg.hashTokens, err, tc.hash)
		}
	}
}

// With no -password, the password comes from ETCD_PASSWORD; -password
// wins over it; with no -user, it is not asked for.
func TestParseFlagsPasswordFromEnvironment(t *testing.T) {
	t.Setenv("ETCD_PASSWORD", "from-env")
	base := []string{"-etcd", "https://127.0.0.1:2379", "-user", "app"}
	for _, tc := range []struct {
		args     []string
		password string
	}{{base, "from-env"}, {append(base, "-password", "from-flag"), "from-flag"}, {append(base, "-password", ""), "from-env"}} {
		if cfg, err := parseFlags(tc.args, io.Discard); err != nil || cfg.password != tc.password || cfg.user != "app" {
			t.Errorf("parseFlags(%q): user %q password %q, %v; want app, %q", tc.args, cfg.user, cfg.password, err, tc.password)
		}
	}
	if _, err := parseFlags(nil, io.Discard); err != nil {
		t.Errorf("parseFlags() with ETCD_PASSWORD set: %v", err)
	}
	t.Setenv("ETCD_PASSWORD", "")
	if _, err := parseFlags(base, io.Discard); err == nil || !strings.Contains(err.Error(), "-user app needs a password") {
		t.Errorf("parseFlags(%q) with no password = %v, want an error that asks for one", base, err)
	}
}

// With no -etcd flag, the endpoints come from ETCD_ENDPOINTS.
func TestParseFlagsFromEnvironment(t *testing.T) {
	t.Setenv("ETCD_ENDPOINTS", "http://127.0.0.1:2379,http://127.0.0.1:22379")
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.endpoints, " "), "http://127.0.0.1:2379 http://127.0.0.1:22379"; got != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	cfg, err = parseFlags([]string{"-etcd", "http://127.0.0.1:32379"}, io.Discard)
	if err != nil || strings.Join(cfg.endpoints, " ") != "http://127.0.0.1:32379" {
		t.Errorf("-etcd beside ETCD_ENDPOINTS: %q, %v; want the flag's", cfg.endpoints, err)
	}
}

// metricValue returns the value of the metric line that begins with name
// in Prometheus's text format.
func metricValue(t *testing.T, metrics, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(metrics, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestUnreachableEtcd: an -etcd that does not answer fails the start
// after the same wait, with the same log line before it and the same
// message, with -user as without: what to check, and that nothing
// listens there. It captures the log, so it does not run in parallel.
func TestUnreachableEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	var logged strings.Builder
	log.SetOutput(&logged)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	const wait = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		cfg  config
	}{
		{"without -user", config{endpoints: []string{"http://" + addr}, wait: wait}},
		{"with -user", config{endpoints: []string{"http://" + addr}, wait: wait, user: appUser, password: appPassword}},
	} {
		logged.Reset()
		start := time.Now()
		_, err = connect(context.Background(), tc.cfg)
		took := time.Since(start)
		want := "etcd at http://" + addr + " did not answer within 300ms: is it running, are these its client URLs (-etcd), and does it have a leader?; http://" + addr + ": nothing accepts connections there"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: connect to a closed port = %v, want an error that says %q", tc.name, err, want)
		}
		if wantLog := "waiting for etcd at http://" + addr + " (at most 300ms)\n"; !strings.HasSuffix(logged.String(), wantLog) || strings.Count(logged.String(), "\n") != 1 {
			t.Errorf("%s: logged %q, want %q", tc.name, logged.String(), wantLog)
		}
		if took < wait || took > wait+2*probeTimeout+time.Second {
			t.Errorf("%s: connect took %v, want the wait, %v", tc.name, took, wait)
		}
	}
}

// TestTLSMismatch: an https:// URL whose server speaks plain http, and an
// http:// URL whose server speaks TLS, fail the start with what to
// change in -etcd.
func TestTLSMismatch(t *testing.T) {
	t.Parallel()
	plain := etcdtest.Start(t, etcdtest.Own()).Endpoints()[0] // http://127.0.0.1:port
	secure := startSecureEtcd(t, etcdstore.DefaultPrefix).endpoint
	host := func(u string) string { _, h, _ := strings.Cut(u, "://"); return h }
	for _, tc := range []struct {
		name     string
		endpoint string
		want     string
	}{
		{"https to plain http", "https://" + host(plain), "https://" + host(plain) + ": the server there speaks plain http, not TLS: use http://" + host(plain)},
		{"http to TLS", "http://" + host(secure), "http://" + host(secure) + ": the server there speaks TLS: use https://" + host(secure) + ", with -cacert for its CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, user := range []string{"", appUser} {
				_, err := connect(context.Background(), config{endpoints: []string{tc.endpoint}, wait: time.Second, user: user, password: appPassword})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("connect to %s (user %q) = %v, want an error that says %q", tc.endpoint, user, err, tc.want)
				}
			}
		})
	}
}

// secureEtcd is an etcd that serves clients over https alone, asks each
// for a certificate its CA signed, and has auth enabled.
type secureEtcd struct {
	endpoint string
	client   tlstest.Files // a client's certificate, key and the CA
	root     *clientv3.Client
}

// The users of startSecureEtcd and their passwords.
const (
	appUser, appPassword         = "app", "app-password"
	noIndexUser, noIndexPassword = "noindex", "noindex-password"
)

// startSecureEtcd starts a secureEtcd with a root user and two others:
// appUser, whose role grants readwrite on exactly the sessions' prefix
// range and their index's, and noIndexUser, whose role grants the
// sessions' prefix alone. Neither has the root role.
func startSecureEtcd(t *testing.T, prefix string) *secureEtcd {
	t.Helper()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "example test CA")
	// etcd's gRPC gateway dials the server with the server's own
	// certificate, so it is valid for both ends.
	server := ca.WriteFiles(t, dir, "etcd", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	// A common name that is no etcd user's: with client-certificate auth
	// etcd takes it as the user of a request without a password login.
	client := ca.WriteFiles(t, dir, "example-client", x509.ExtKeyUsageClientAuth)
	srv := etcdtest.Start(t, func(cfg *embed.Config) {
		for _, urls := range [][]url.URL{cfg.ListenClientUrls, cfg.AdvertiseClientUrls} {
			for i := range urls {
				urls[i].Scheme = "https"
			}
		}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: server.Cert, KeyFile: server.Key, TrustedCAFile: server.CA, ClientCertAuth: true}
		cfg.AuthToken = "simple"
		cfg.BcryptCost = 4 // bcrypt.MinCost: the tests need speed, not strength
	})
	tlsConfig, err := (transport.TLSInfo{CertFile: client.Cert, KeyFile: client.Key, TrustedCAFile: client.CA}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin := etcdtest.NewClient(t, clientv3.Config{Endpoints: srv.Endpoints(), TLS: tlsConfig})
	ctx := etcdtest.Context(t, 30*time.Second)
	index := etcdstore.PrincipalIndexPrefix(prefix)
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-password"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
	}
	for _, u := range []struct {
		name, password string
		prefixes       []string
	}{{appUser, appPassword, []string{prefix, index}}, {noIndexUser, noIndexPassword, []string{prefix}}} {
		steps = append(steps,
			func() error { _, err := admin.RoleAdd(ctx, u.name); return err },
			func() error { _, err := admin.UserAdd(ctx, u.name, u.password); return err },
			func() error { _, err := admin.UserGrantRole(ctx, u.name, u.name); return err })
		for _, p := range u.prefixes {
			steps = append(steps, func() error {
				_, err := admin.RoleGrantPermission(ctx, u.name, p, clientv3.GetPrefixRangeEnd(p), clientv3.PermissionType(clientv3.PermReadWrite))
				return err
			})
		}
	}
	steps = append(steps, func() error { _, err := admin.AuthEnable(ctx); return err })
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup, step %d: %v", i+1, err)
		}
	}
	root := etcdtest.NewClient(t, clientv3.Config{Endpoints: srv.Endpoints(), TLS: tlsConfig, Username: "root", Password: "root-password"})
	return &secureEtcd{endpoint: srv.Endpoints()[0], client: client, root: root}
}

// flags returns the example's flags for e, then extra: later flags
// override earlier ones.
func (e *secureEtcd) flags(extra ...string) []string {
	return append([]string{"-addr", "127.0.0.1:0", "-etcd", e.endpoint,
		"-cacert", e.client.CA, "-cert", e.client.Cert, "-key", e.client.Key}, extra...)
}

// appLogin is the login flags of appUser.
var appLogin = []string{"-user", appUser, "-password", appPassword}

// TestSecuredCluster: the example, with -cacert, -cert, -key, -user and
// -password, serves its sessions from an etcd that requires a client
// certificate and a login, as a user whose role grants only the
// sessions' prefix and their index's. etcd holds the tokens' digests
// (-hash-tokens, on by default), or with -hash-tokens=false the tokens.
func TestSecuredCluster(t *testing.T) {
	t.Parallel()
	e := startSecureEtcd(t, etcdstore.DefaultPrefix)
	cfg, err := parseFlags(e.flags(appLogin...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := startApp(t, cfg)
	ann := webtest.New(t)
	ann.Want(base, "/put", "stored\n")
	ann.Want(base, "/get", "Hello from a session!\n")
	ann.Want(base, "/login?name=ann", "logged in as ann\n")
	devices := ann.MustGet(base, "/devices")
	if !strings.HasPrefix(devices, "sessions of ann: 1\n") || !strings.Contains(devices, " (this one)\n") {
		t.Errorf("/devices = %q, want one session of ann, this one", devices)
	}

	// SCS's digest under HashTokenInStore (scs v2.9.0, data.go,
	// hashToken).
	token := ann.Token(base)
	sum := sha256.Sum256([]byte(token))
	digest := base64.RawURLEncoding.EncodeToString(sum[:])
	if keys := sessionKeys(t, e.root); !slices.Contains(keys, etcdstore.DefaultPrefix+digest) || strings.Contains(strings.Join(keys, " "), token) {
		t.Errorf("keys %q in etcd, cookie token %q: want its digest %q, not the token", keys, token, digest)
	}

	// -hash-tokens=false: the key is the token.
	cfg, err = parseFlags(e.flags(append(appLogin, "-hash-tokens=false")...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	base, _ = startApp(t, cfg)
	bob := webtest.New(t)
	bob.Want(base, "/login?name=bob", "logged in as bob\n")
	if keys := sessionKeys(t, e.root); !slices.Contains(keys, etcdstore.DefaultPrefix+bob.Token(base)) {
		t.Errorf("keys %q in etcd, want one of bob's token %q", keys, bob.Token(base))
	}
}

// sessionKeys returns the keys under the default prefix.
func sessionKeys(t *testing.T, c *clientv3.Client) []string {
	t.Helper()
	return etcdtest.Keys(t, c, etcdstore.DefaultPrefix)
}

// TestSecuredClusterRefusals: wrong or missing credentials, files or
// permissions fail the start within the wait, with an error that says
// what to check.
func TestSecuredClusterRefusals(t *testing.T) {
	t.Parallel()
	e := startSecureEtcd(t, etcdstore.DefaultPrefix)
	other := tlstest.NewCA(t, "another CA").WriteFiles(t, t.TempDir(), "other", x509.ExtKeyUsageClientAuth)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const wait = time.Second
	login := func(user, password string, extra ...string) []string {
		return append([]string{"-user", user, "-password", password}, extra...)
	}
	for _, tc := range []struct {
		name  string
		args  []string // after e.flags()
		want  string
		is    error // wrapped, or nil
		check bool  // parseFlags fails, before any connection
	}{
		{name: "wrong password", args: login(appUser, "wrong"), want: `refused user "app": are -user and the password (-password, or ETCD_PASSWORD) right?`, is: rpctypes.ErrAuthFailed},
		{name: "no such user", args: login("nobody", appPassword), want: `refused user "nobody"`, is: rpctypes.ErrAuthFailed},
		{name: "no index permission", args: login(noIndexUser, noIndexPassword), want: `user "noindex" may not read the sessions (prefix "scs:session:") or their index (prefix "etcdstore/principal/12:scs:session:/"): grant its role readwrite on both`, is: rpctypes.ErrPermissionDenied},
		{name: "no login", want: "has auth enabled, and a client without -user may not read the sessions: pass -user, and its password with -password or ETCD_PASSWORD", is: rpctypes.ErrPermissionDenied},
		{name: "password without user", args: []string{"-password", appPassword}, check: true, want: "-password needs -user"},
		{name: "missing CA file", args: login(appUser, appPassword, "-cacert", filepath.Join(t.TempDir(), "missing.pem")), want: "-cacert: open ", is: os.ErrNotExist},
		{name: "key as CA", args: login(appUser, appPassword, "-cacert", e.client.Key), want: "-cacert " + e.client.Key + ": no certificate in it"},
		{name: "not PEM", args: login(appUser, appPassword, "-cert", notPEM), want: "-cert " + notPEM + ": not a PEM file"},
		{name: "key of another certificate", args: login(appUser, appPassword, "-key", other.Key), want: "private key does not match public key"},
		{name: "cert without key", args: login(appUser, appPassword, "-key", ""), check: true, want: "-cert and -key go together"},
		{name: "http URL with TLS", args: login(appUser, appPassword, "-etcd", "http://"+strings.TrimPrefix(e.endpoint, "https://")), check: true, want: "with -cacert, -cert or -key the URLs are https://"},
		{name: "server not trusted", args: []string{"-cacert", other.CA}, want: "did not answer within 1s: is it running, are these its client URLs (-etcd), does it accept -cert, is its certificate signed by -cacert, and does it have a leader?"},
		// The same wait, and the same message, with -user.
		{name: "server not trusted, at login", args: login(appUser, appPassword, "-cacert", other.CA), want: "did not answer within 1s: is it running, are these its client URLs (-etcd), does it accept -cert, is its certificate signed by -cacert, and does it have a leader?"},
		{name: "no client certificate", args: []string{"-cert", "", "-key", ""}, want: "did not answer within 1s"},
		{name: "client certificate of another CA", args: []string{"-cert", other.Cert, "-key", other.Key}, want: "did not answer within 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseFlags(e.flags(tc.args...), io.Discard)
			if tc.check {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("parseFlags = %v, want an error that says %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg.wait = wait
			start := time.Now()
			conn, err := connect(context.Background(), cfg)
			if err == nil {
				conn.close()
				t.Fatal("connect: no error")
			}
			if !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("connect = %v\nwant an error that says %q and wraps %v", err, tc.want, tc.is)
			}
			if took := time.Since(start); took > wait+2*probeTimeout+5*time.Second {
				t.Errorf("the refused connect took %v", took)
			}
			t.Logf("%v (%v)", err, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestDataDirInUse: an app started on the data directory of one that
// runs fails at once, with an error that says the directory is in use
// and what to do; once the first has stopped, it starts.
func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"-data", dir, "-addr", "127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	base, stop := startApp(t, cfg)
	webtest.New(t).Want(base, "/put", "stored\n") // it has started
	start := time.Now()
	conn, err := connect(context.Background(), cfg)
	if err == nil {
		conn.close()
		t.Fatal("a second app on the same data directory started")
	}
	if want := "embedded etcd: data directory " + dir + " is in use by another etcd member of this process (lock " + filepath.Join(dir, embedetcd.LockFile) + "); stop it or pass another -data"; err.Error() != want {
		t.Errorf("second app on the same data directory: %v\nwant %s", err, want)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refused start took %v", took)
	}
	stop()
	conn, err = connect(context.Background(), cfg)
	if err != nil {
		t.Fatalf("an app on the data directory after the first stopped: %v", err)
	}
	conn.close()
}

// readmeEtcdEnv names the environment variable through which
// .ci/readme-auth points TestReadmeAuth at the etcd server it set up with
// the README's authentication steps, started with --auth-token-ttl 3.
const readmeEtcdEnv = "ETCDSTORE_README_ETCD"

// TestReadmeAuth is the README's path on a secured etcd, run by
// .ci/readme-auth after the README's etcdctl steps (skipped otherwise):
// the example as user app (its password in ETCD_PASSWORD, as the README
// sets it) with -cache serves sessions, and still does after an idle
// longer than the server's token TTL (3 s), its keep-alive scaled down
// with the TTL (1 s for 3 s; the store's default, 1 minute, for etcd's
// default, 5 minutes). Then with -compact 1s, whose requests would keep
// the token in use by themselves: every refusal it logs says what to
// fix. It captures the log, so it does not run in parallel.
func TestReadmeAuth(t *testing.T) {
	endpoint := os.Getenv(readmeEtcdEnv)
	if endpoint == "" {
		t.Skipf("%s is not set: .ci/readme-auth sets it", readmeEtcdEnv)
	}
	var logged syncBuffer
	log.SetOutput(&logged)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	run := func(extra ...string) (string, func()) {
		cfg, err := parseFlags(append([]string{"-addr", "127.0.0.1:0", "-etcd", endpoint, "-user", "app"}, extra...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		cfg.keepAlive = time.Second
		return startApp(t, cfg)
	}

	base, stop := run("-cache")
	ann := webtest.New(t)
	ann.Want(base, "/put", "stored\n")
	ann.Want(base, "/login?name=ann", "logged in as ann\n")
	const idle = 4500 * time.Millisecond
	time.Sleep(idle)
	start := time.Now()
	ann.Want(base, "/get", "Hello from a session!\n")
	ann.Want(base, "/count", "count: 1\n")
	if devices := ann.MustGet(base, "/devices"); !strings.HasPrefix(devices, "sessions of ann: 1\n") {
		t.Errorf("/devices after %v idle = %q, want one session of ann", idle, devices)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("three requests after %v idle took %v", idle, took)
	}
	stop()
	if out := logged.String(); !strings.Contains(out, "read cache on") && !strings.Contains(out, "read cache off: etcd at "+endpoint+" runs 3.4.") {
		t.Errorf("the log says nothing of the read cache (-cache), or not which server turned it off:\n%s", out)
	}

	_, stop = run("-compact", "1s")
	time.Sleep(2500 * time.Millisecond)
	stop()
	out := logged.String()
	t.Logf("the example's log:\n%s", out)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "compactor") && strings.Contains(line, "denied") &&
			!strings.Contains(line, "compact only for a user with the root role; run RunCompactor with a client of such a user, or set etcd's --auto-compaction-retention instead") {
			t.Errorf("the README's role lacks a grant, or a compactor refusal does not say what to fix: %s", line)
		}
	}
}

// syncBuffer is a strings.Builder safe for the log's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
