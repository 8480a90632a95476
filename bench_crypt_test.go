package etcdstore_test

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
)

// BenchmarkEncryption compares Commit and Find with WithEncryption to the
// same calls without it, interleaved on one member and client, 256 B and
// 4 KiB sessions, 32 goroutines: x-plain is the encrypted store's rate
// over the plain store's.
func BenchmarkEncryption(b *testing.B) {
	key := make([]byte, etcdstore.EncryptionKeySize)
	rand.Read(key)
	for _, size := range valueSizes {
		b.Run("Commit/"+size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(size.n)
			commitOp := func(name string, store *etcdstore.EtcdStore) contender {
				tokens := newTokens(hotSessions)
				return contender{name, func(i int) error {
					return store.CommitCtx(ctx, tokens[i%len(tokens)], value, time.Now().Add(sessionLifetime))
				}}
			}
			sealed := commitOp("sealed", etcdstore.New(client, etcdstore.WithEncryption(key)))
			plain := commitOp("plain", etcdstore.New(client))
			for _, c := range []contender{sealed, plain} {
				var warm sample
				if err := runChunk(&warm, hotSessions, 32, c.op); err != nil {
					b.Fatalf("warm up %s: %v", c.name, err)
				}
			}
			compact(b, ctx, client)
			s, base := interleave(b, func() { compact(b, ctx, client) }, sealed, plain)
			reportBaselines(b, s, []contender{plain}, base)
		})
		b.Run("Find/"+size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(size.n)
			expiry := time.Now().Add(sessionLifetime)
			findOn := func(name string, store *etcdstore.EtcdStore) contender {
				tokens := newTokens(hotSessions)
				if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
					b.Fatal(err)
				}
				return findOp(ctx, name, store, tokens)
			}
			sealed := findOn("sealed", etcdstore.New(client, etcdstore.WithEncryption(key)))
			plain := findOn("plain", etcdstore.New(client))
			s, base := interleave(b, nil, sealed, plain)
			reportBaselines(b, s, []contender{plain}, base)
		})
	}
}
