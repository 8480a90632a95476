package etcdstore

import (
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
