package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdstore/etcdstore"
)

// Exit codes, as -h lists them.
const (
	exitOK          = 0
	exitFailed      = 1 // an etcd request failed during the run
	exitUsage       = 2 // bad command or flags
	exitUnreachable = 3 // no etcd endpoint answered
	exitAuth        = 4 // etcd refused the user, its password or its permissions
	exitKeys        = 5 // the -keys file cannot be read or holds a bad key
	exitPrefix      = 6 // -prefix fails etcdstore.CheckPrefix
	exitFound       = 7 // check found problems it did not fix
	exitInterrupted = 130
)

// defaultPrincipalKey is the session key that names a session's user in
// the example app (internal/exampleapp.PrincipalKey).
const defaultPrincipalKey = "user"

const usage = `etcdstore: an operator's tool for the SCS sessions etcdstore keeps in etcd.

Usage:
  etcdstore COMMAND [flags]

Commands:
  count                   count the live sessions (-principal P: of P)
  ls                      list the live sessions: token, expiry, size, principal, revision, key
  logout -principal P     end every session of P (DeleteByPrincipal)
  logout -all             end every session (a breach): each gets a "revoked" tombstone
  reseal                  write every session sealed under an older key (or in the clear)
                          again under the first key of -keys, then say whether any still
                          needs an old key
  check [-fix]            the principal index against the sessions (-fix repairs it), the
                          compactor, the read cache's support and the etcd members' versions

Connection (as the example app's):
  -etcd URLS        comma-separated etcd client URLs (default $ETCD_ENDPOINTS)
  -cacert, -cert, -key  PEM files: the CA of etcd's servers, a client certificate and key
  -user NAME        etcd user; its password in $ETCD_PASSWORD, or -password
  -prefix P         the store's key prefix (default "scs:session:")
  -principal-key K  the session key WithPrincipal names (default "user", the example's)
  -keys FILE        encryption keys, one a line, the first seals (as WithEncryption):
                    each 32 bytes in base64 or hex (openssl rand -base64 32); "clear" as
                    the first line writes in the clear; blank lines and #comments ignored
  -timeout D        deadline of each etcd request (default 5s)

Output:
  -json             JSON lines instead of a table
  -hash-tokens      the app sets HashTokenInStore, so the keys are digests and are shown
                    (default true, as the example app); with -hash-tokens=false only a
                    fingerprint of each token is shown, since the key is the cookie
  -show-tokens      show the keys even with -hash-tokens=false
  -show-data        show each session's data, decoded (needs -keys for sealed sessions)

logout -all and reseal:
  -dry-run          say how many sessions it would change, change nothing
  -from TOKEN       start at this token (as printed on progress or interrupt); a rerun
                    from the start is safe too: tombstones and current sessions are skipped

A session an app server creates while logout -all runs may survive it; one an app server
commits while reseal runs keeps what the app server wrote. Progress goes to stderr.

Exit codes:
  0 done   1 an etcd request failed during the run   2 bad command or flags
  3 no etcd endpoint answered: check -etcd/$ETCD_ENDPOINTS, and -cacert for https
  4 etcd refused the user, password or permissions: check -user, $ETCD_PASSWORD, its role
  5 the -keys file cannot be read or holds a bad key   6 -prefix is not a store's prefix
  7 check found problems and did not fix them (run check -fix)   130 interrupted
`

// config is a run's flags.
type config struct {
	endpoints                     string
	caCert, cert, key             string
	user, password                string
	prefix, principalKey, keyFile string
	timeout                       time.Duration
	json, hashTokens, showTokens  bool
	showData, dryRun, all, fix    bool
	principal, from               string
}

// exitError is an error with the exit code it ends the run with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func fail(code int, format string, args ...any) error {
	return &exitError{code, fmt.Errorf(format, args...)}
}

// run runs the command of args, writing to stdout and stderr, and returns
// its exit code. afterPage, if not nil, is called with the count of
// sessions done after each page of logout -all and reseal (tests cancel
// ctx from it).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, afterPage func(done int)) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	name, args := args[0], args[1:]
	cmds := map[string]func(context.Context, *env) error{
		"count": cmdCount, "ls": cmdLs, "logout": cmdLogout, "reseal": cmdReseal, "check": cmdCheck,
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "etcdstore: unknown command %q (count, ls, logout, reseal, check; -h for help)\n", name)
		return exitUsage
	}
	cfg, err := parseFlags(name, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "etcdstore %s: %v\n", name, err)
		return exitUsage
	}
	e := &env{cfg: cfg, out: stdout, errOut: stderr, afterPage: afterPage}
	err = e.connect(ctx)
	if err == nil {
		defer e.close()
		err = cmd(ctx, e)
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "etcdstore %s: %v\n", name, err)
	var x *exitError
	switch {
	case errors.As(err, &x):
		return x.code
	case ctx.Err() != nil:
		return exitInterrupted
	}
	return exitFailed
}

// parseFlags reads the flags of command name.
func parseFlags(name string, args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.endpoints, "etcd", os.Getenv("ETCD_ENDPOINTS"), "")
	fs.StringVar(&cfg.caCert, "cacert", "", "")
	fs.StringVar(&cfg.cert, "cert", "", "")
	fs.StringVar(&cfg.key, "key", "", "")
	fs.StringVar(&cfg.user, "user", "", "")
	fs.StringVar(&cfg.password, "password", "", "")
	fs.StringVar(&cfg.prefix, "prefix", etcdstore.DefaultPrefix, "")
	fs.StringVar(&cfg.principalKey, "principal-key", defaultPrincipalKey, "")
	fs.StringVar(&cfg.keyFile, "keys", "", "")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "")
	fs.BoolVar(&cfg.json, "json", false, "")
	fs.BoolVar(&cfg.hashTokens, "hash-tokens", true, "")
	fs.BoolVar(&cfg.showTokens, "show-tokens", false, "")
	fs.BoolVar(&cfg.showData, "show-data", false, "")
	fs.StringVar(&cfg.principal, "principal", "", "")
	switch name {
	case "logout":
		fs.BoolVar(&cfg.all, "all", false, "")
		fs.BoolVar(&cfg.dryRun, "dry-run", false, "")
		fs.StringVar(&cfg.from, "from", "", "")
	case "reseal":
		fs.BoolVar(&cfg.dryRun, "dry-run", false, "")
		fs.StringVar(&cfg.from, "from", "", "")
	case "check":
		fs.BoolVar(&cfg.fix, "fix", false, "")
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (flags go after the command; -h for help)", fs.Arg(0))
	}
	if cfg.password == "" {
		cfg.password = os.Getenv("ETCD_PASSWORD")
	}
	switch {
	case cfg.endpoints == "":
		return cfg, errors.New("no etcd endpoints: give -etcd URLS or set $ETCD_ENDPOINTS")
	case cfg.timeout <= 0:
		return cfg, fmt.Errorf("-timeout %v is not positive", cfg.timeout)
	case cfg.principalKey == "":
		return cfg, errors.New("-principal-key is empty")
	case name == "logout" && cfg.all == (cfg.principal != ""):
		return cfg, errors.New("logout needs -principal P or -all, not both")
	case name == "reseal" && cfg.keyFile == "":
		return cfg, errors.New("reseal needs -keys FILE: the key to seal under first, then the old ones")
	case cfg.showData && !cfg.showTokens && !cfg.hashTokens:
		return cfg, errors.New("-show-data lists sessions by token: with -hash-tokens=false, add -show-tokens")
	}
	return cfg, nil
}

// readKeys reads the -keys file: one key a line, 32 bytes in base64
// (standard or URL alphabet, padded or not) or hex; "clear" as the first
// key writes in the clear; blank lines and lines starting with # are
// skipped.
func readKeys(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fail(exitKeys, "-keys: %w", err)
	}
	var keys [][]byte
	seen := make(map[uint32]int)
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line == "clear" && len(keys) == 0 {
			keys = append(keys, nil)
			continue
		}
		k, ok := decodeKey(line)
		if !ok {
			return nil, fail(exitKeys, "-keys %s line %d: not %d bytes in base64 or hex (make one with: openssl rand -base64 32)", path, n+1, etcdstore.EncryptionKeySize)
		}
		id := etcdstore.KeyID(k)
		if m, dup := seen[id]; dup {
			return nil, fail(exitKeys, "-keys %s lines %d and %d hold the same key", path, m, n+1)
		}
		seen[id] = n + 1
		keys = append(keys, k)
	}
	if len(keys) == 0 || len(keys) == 1 && keys[0] == nil {
		return nil, fail(exitKeys, "-keys %s holds no key", path)
	}
	return keys, nil
}

func decodeKey(s string) ([]byte, bool) {
	if k, err := hex.DecodeString(s); err == nil && len(k) == etcdstore.EncryptionKeySize {
		return k, true
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == etcdstore.EncryptionKeySize {
			return k, true
		}
	}
	return nil, false
}

// env is a run's connection and output.
type env struct {
	cfg       config
	out       io.Writer
	errOut    io.Writer
	afterPage func(int)
	keys      [][]byte
	client    *clientv3.Client
	store     *etcdstore.EtcdStore
}

// connect checks the prefix, reads the keys, connects to etcd and reads
// the prefix once, so that a wrong endpoint, password or permission fails
// here, with its exit code.
func (e *env) connect(ctx context.Context) error {
	cfg := e.cfg
	if err := etcdstore.CheckPrefix(cfg.prefix); err != nil {
		return fail(exitPrefix, "-prefix: %w", err)
	}
	if cfg.keyFile != "" {
		keys, err := readKeys(cfg.keyFile)
		if err != nil {
			return err
		}
		e.keys = keys
	}
	tlsConfig, err := clientTLS(cfg)
	if err != nil {
		return fail(exitUsage, "%w", err)
	}
	eps := strings.Split(cfg.endpoints, ",")
	e.client, err = clientv3.New(clientv3.Config{
		Endpoints: eps, TLS: tlsConfig, Username: cfg.user, Password: cfg.password,
		DialTimeout: cfg.timeout, DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		Logger: zap.NewNop(),
	})
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		_, err = e.client.Get(pctx, cfg.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
	}
	if err != nil {
		if e.client != nil {
			e.client.Close()
			e.client = nil
		}
		return connectError(ctx, cfg, err)
	}
	opts := []etcdstore.Option{etcdstore.WithPrincipal(cfg.principalKey), etcdstore.WithTimeout(cfg.timeout)}
	if e.keys != nil {
		opts = append(opts, etcdstore.WithEncryption(e.keys...))
	}
	e.store = etcdstore.NewWithPrefix(e.client, cfg.prefix, opts...)
	return nil
}

// connectError explains the failure of the first request.
func connectError(ctx context.Context, cfg config, err error) error {
	switch {
	case ctx.Err() != nil:
		return err
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fail(exitAuth, "etcd at %s refused user %q with this password: check -user and $ETCD_PASSWORD (or -password): %w", cfg.endpoints, cfg.user, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty), errors.Is(err, rpctypes.ErrInvalidAuthToken):
		return fail(exitAuth, "etcd at %s refused user %q: check -user, $ETCD_PASSWORD, and that its role has readwrite on %q and %q: %w", cfg.endpoints, cfg.user, cfg.prefix, etcdstore.PrincipalIndexPrefix(cfg.prefix), err)
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.Unavailable, status.Code(err) == codes.DeadlineExceeded:
		hint := ""
		if strings.Contains(cfg.endpoints, "https://") && cfg.caCert == "" {
			hint = "; for https:// give -cacert"
		}
		return fail(exitUnreachable, "no answer from etcd at %s within %v: check -etcd (or $ETCD_ENDPOINTS) and that etcd runs there%s: %w", cfg.endpoints, cfg.timeout, hint, err)
	}
	return fail(exitUnreachable, "etcd at %s: %w", cfg.endpoints, err)
}

// clientTLS returns the TLS configuration of -cacert, -cert and -key, or
// nil when none is given.
func clientTLS(cfg config) (*tls.Config, error) {
	if cfg.caCert == "" && cfg.cert == "" && cfg.key == "" {
		return nil, nil
	}
	info := transport.TLSInfo{TrustedCAFile: cfg.caCert, CertFile: cfg.cert, KeyFile: cfg.key, Logger: zap.NewNop()}
	t, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS from -cacert %q, -cert %q, -key %q: %w", cfg.caCert, cfg.cert, cfg.key, err)
	}
	return t, nil
}

func (e *env) close() {
	e.store.Close()
	e.client.Close()
}
