package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrValueTooLarge is wrapped by the error Commit and CommitCtx return
// when etcd refuses the write for its size: over the server's
// --max-request-bytes (default 1.5 MiB,
// https://etcd.io/docs/v3.6/dev-guide/limit/) or the client's send limit
// (clientv3.Config.MaxCallSendMsgSize, default 2 MiB). The session was not
// written; the store keeps working.
var ErrValueTooLarge = errors.New("etcdstore: session too large for etcd")

// ErrClientClosed is wrapped by the error every method that would ask
// etcd returns, at once and without a request, once the etcd client the
// store was made with is closed (a token over MaxTokenLen needs no
// request, and gets no error). The error wraps context.Canceled too (the client's context is
// canceled when it closes), but errors.Is(err, ErrClientClosed) tells it
// from a canceled request.
var ErrClientClosed = errors.New("etcd client is closed")

// ErrNoPrincipal is wrapped by the error FindByPrincipal and
// DeleteByPrincipal return, at once, on a store made without
// WithPrincipal.
var ErrNoPrincipal = errors.New("etcdstore: the store keeps no index of sessions by principal: make it with the WithPrincipal option")

// errCorrupt marks the error of a stored value that does not decode.
var errCorrupt = errors.New("etcdstore: corrupt session value")

// whichSession names, in an error, the stored session whose key has mod
// revision mod, without its key: the key holds the token, which is a
// password (with HashTokenInStore, its digest is one too). An operator
// finds the key with etcdctl get --prefix <prefix> -w json, by its
// mod_revision.
func whichSession(mod int64) string {
	return fmt.Sprintf("the session key of mod revision %d", mod)
}

// ErrRawToken is wrapped by the error DeleteByPrincipal returns, having
// deleted nothing, when a token in except is not one of the principal's
// sessions but its SHA-256 digest is: the app passed the token as it has
// it (sm.Token(ctx)) to a store that sees digests (HashTokenInStore), and
// would have deleted the very session it meant to keep. Pass
// StoreToken(sm, token).
var ErrRawToken = errors.New("etcdstore: a session token as the app has it, where the store's is wanted: the session manager hashes tokens in the store (HashTokenInStore); pass etcdstore.StoreToken(sm, token)")

// errNotSynced says the read cache cannot serve a read now; the read goes
// to etcd.
var errNotSynced = errors.New("read cache not in sync")

// errNoPrincipal is the error of method on a store made without
// WithPrincipal.
func errNoPrincipal(method string) error {
	return fmt.Errorf("%w (%s needs it)", ErrNoPrincipal, method)
}

// clientErr returns an error once client is closed. Without it, each call
// on a closed client spends seconds in the client's retries before it
// fails.
func clientErr(client *clientv3.Client) error {
	if err := client.Ctx().Err(); err != nil {
		return fmt.Errorf("%w (%w)", ErrClientClosed, err)
	}
	return nil
}

// tooLarge reports whether err is etcd refusing a request for its size,
// on the server (rpctypes.ErrRequestTooLarge) or in the client's gRPC send
// limit (codes.ResourceExhausted).
func tooLarge(err error) bool {
	return errors.Is(err, rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted
}

// tooLargeError is the error of a commit of size bytes of key and value
// that etcd refused for its size, naming the limit that refused it: the
// client's own send limit, whose gRPC error says "trying to send"
// (grpc-go rpc_util.go), or else the server's.
func tooLargeError(err error, size int) error {
	limit := "the server's --max-request-bytes (default 1.5 MiB)"
	if !errors.Is(err, rpctypes.ErrRequestTooLarge) && strings.Contains(status.Convert(err).Message(), "trying to send") {
		limit = "the client's send limit, clientv3.Config.MaxCallSendMsgSize (default 2 MiB)"
	}
	return fmt.Errorf("%w: commit of a %d-byte key and value refused by %s; raise it or keep less in the session: %w", ErrValueTooLarge, size, limit, err)
}

// commitError wraps an error of the etcd requests of a commit. etcd out
// of space gets the way out in its message: etcd refuses every write once
// its database file reaches --quota-backend-bytes, and keeps refusing
// after space is freed until its NOSPACE alarm is disarmed (etcd docs,
// "Maintenance": https://etcd.io/docs/v3.6/op-guide/maintenance/).
func commitError(err error) error {
	if errors.Is(err, rpctypes.ErrNoSpace) {
		return fmt.Errorf("etcdstore: commit: etcd is out of space (its database reached --quota-backend-bytes and it raised the NOSPACE alarm); compact its history (etcdctl compact), defragment (etcdctl defrag), then run etcdctl alarm disarm, and turn on auto-compaction: %w", err)
	}
	return fmt.Errorf("etcdstore: commit: %w", err)
}

// explain returns err, the error of a call, with what to fix when etcd
// refused the call for authentication: the user and the ranges its role
// needs on permission denied, the login on a missing or refused one, and
// the login's diagnosis of a token etcd refuses for good (login.go) on a
// call that timed out.
func (s *EtcdStore) explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("%w (%s)", err, s.permissionHint())
	case errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("%w (etcd has authentication on, and the client logs in as no one: give clientv3.Config a Username and Password, or a client certificate whose common name is an etcd user)", err)
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("%w (etcd refused the login of user %q when the client logged in again: was its password changed, or the user deleted? Make a client with the current password)", err, s.client.Username)
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		return fmt.Errorf("%w (the client logs in as user %q, and etcd has authentication off)", err, s.client.Username)
	case s.login != nil:
		return s.login.explain(err)
	}
	return err
}

// permissionHint says who was refused and what its role needs: readwrite
// on the store's prefix and, with WithPrincipal, on its index's.
func (s *EtcdStore) permissionHint() string {
	who := fmt.Sprintf("etcd user %q", s.client.Username)
	if s.client.Username == "" {
		who = "the client's etcd user (its certificate's common name)"
	}
	ranges := fmt.Sprintf("the store's prefix %q", s.keys.prefix)
	if s.index != nil {
		ranges += fmt.Sprintf(" and its principal index's prefix %q", s.index.prefix)
	}
	return fmt.Sprintf("%s may not read or write a key the store needs: grant its role readwrite on %s (etcdctl role grant-permission ROLE readwrite --prefix=true PREFIX)", who, ranges)
}

// CheckPrefix returns why prefix cannot be a store's key prefix, or nil.
// A prefix may not be empty, which would make All span the whole etcd
// keyspace, and its range of keys (every key that begins with it) may
// not overlap the keys the stores keep for themselves: it may neither
// cover nor lie under PrincipalIndexRoot, where the principal indexes
// are, nor cover CompactorKey; else All would read index entries or the
// compactor's key as sessions, or sessions would mix with index entries.
// NewWithPrefix panics with this error's message; an app that takes the
// prefix from its configuration can check it first.
func CheckPrefix(prefix string) error {
	switch {
	case prefix == "":
		return fmt.Errorf("etcdstore: empty prefix: it would make All span the whole etcd keyspace; give a prefix that ends in a separator, as the default %q does", DefaultPrefix)
	case strings.HasPrefix(PrincipalIndexRoot, prefix):
		return fmt.Errorf("etcdstore: prefix %q covers the principal indexes under %q: All would read their entries as sessions; choose a prefix that %q does not begin with, such as %q", prefix, PrincipalIndexRoot, PrincipalIndexRoot, "etcdstore/sessions/")
	case strings.HasPrefix(prefix, PrincipalIndexRoot):
		return fmt.Errorf("etcdstore: prefix %q lies under %q, where the stores keep their principal indexes: its sessions would mix with index entries; choose a prefix outside it", prefix, PrincipalIndexRoot)
	case strings.HasPrefix(CompactorKey, prefix):
		return fmt.Errorf("etcdstore: prefix %q covers the compactor's key %q (CompactorKey): All would read it as a session; choose a longer or another prefix", prefix, CompactorKey)
	}
	return nil
}

// mustContext panics, as the context package does on a nil parent, when
// a method is given a nil context.
func mustContext(ctx context.Context, method string) {
	if ctx == nil {
		panic("etcdstore: " + method + " called with a nil Context: pass context.Background() or the request's context")
	}
}
