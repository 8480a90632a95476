package etcdstore

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Encryption at rest (WithEncryption).
//
// A session's data is sealed with XChaCha20-Poly1305
// (golang.org/x/crypto/chacha20poly1305): its 24-byte nonces may be drawn
// at random for as many writes as any store makes (the chance of a
// repeat stays negligible past 2^64 messages under one key), where
// AES-GCM's 12-byte random nonces cap a key at about 2^32 writes and, by
// Kubernetes' advice for its etcd encryption, should be rotated every
// 200,000 writes. The associated data is the envelope's header (magic,
// version, expiry, key ID) and the session's key (prefix and token), so a
// value copied to another session's key, or given another expiry, does
// not open.
//
// Keys rotate as Kubernetes' EncryptionConfiguration does: the first key
// seals, every key opens, each sealed value naming its key by an ID
// derived from the key itself; a nil first key, as Kubernetes' identity
// provider first, writes in the clear. A rollout has two steps, so that
// no app server meets a value it cannot open: every server gets the new
// key second, then first; the old key goes once the sessions sealed
// under it have expired.

// EncryptionKeySize is the size of a WithEncryption key, in bytes.
const EncryptionKeySize = chacha20poly1305.KeySize

// errUnopenable marks a sealed value the store cannot open: sealed under
// a key it was not given, or that fails to authenticate. Its session is
// absent to every read, and counted in Stats.DecryptFailures.
var errUnopenable = errors.New("sealed session does not open")

// sealer seals and opens session data under the keys of WithEncryption,
// and derives the principal index's keyed hash from them. It is safe for
// concurrent use by multiple goroutines.
type sealer struct {
	keys []sealKey // the first seals, unless clear
	// clear is set when the first key given was nil: new values are
	// written in the clear, as Kubernetes' identity provider first in its
	// list does, while the keys open what they sealed.
	clear bool
}

// sealKey is one key of a sealer: its ID, its AEAD, and the key of the
// principal index entries of the sessions it seals.
type sealKey struct {
	id    uint32
	aead  cipher.AEAD
	index []byte
}

// newSealer returns the sealer of keys, or panics: a key not of
// EncryptionKeySize bytes, or two keys of one ID, is a configuration
// error, as a bad prefix is.
func newSealer(keys [][]byte) *sealer {
	if len(keys) == 0 {
		panic("etcdstore: WithEncryption needs at least one key")
	}
	s := &sealer{}
	seen := make(map[uint32]int)
	for i, k := range keys {
		if k == nil && i == 0 && len(keys) > 1 {
			s.clear = true
			continue
		}
		if len(k) != EncryptionKeySize {
			panic(fmt.Sprintf("etcdstore: WithEncryption key %d is %d bytes, want %d (for example 32 bytes from crypto/rand, or `openssl rand 32`)", i, len(k), EncryptionKeySize))
		}
		aead, err := chacha20poly1305.NewX(k)
		if err != nil {
			panic(fmt.Sprintf("etcdstore: WithEncryption key %d: %v", i, err))
		}
		id := keyID(k)
		if j, dup := seen[id]; dup {
			panic(fmt.Sprintf("etcdstore: WithEncryption keys %d and %d have the same key ID: they are the same key (or, one time in 4 billion, two keys whose IDs collide: make another)", j, i))
		}
		seen[id] = i
		s.keys = append(s.keys, sealKey{id: id, aead: aead, index: derive(k, "etcdstore principal index")})
	}
	return s
}

// derive returns a key for purpose derived from key: HMAC-SHA-256 under
// key, so that what it keys reveals nothing of key.
func derive(key []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// keyID is the ID a sealed value names its key by: the first 4 bytes of
// a key derived from it. Nonzero, as 0 means "not sealed" in a token's
// memory.
func keyID(key []byte) uint32 {
	id := binary.BigEndian.Uint32(derive(key, "etcdstore key id"))
	return max(id, 1)
}

// byID returns the key of id, if the sealer has it.
func (s *sealer) byID(id uint32) (*sealKey, bool) {
	for i := range s.keys {
		if s.keys[i].id == id {
			return &s.keys[i], true
		}
	}
	return nil, false
}

// sealedID is the ID of the key that seals, or 0 when new values are
// written in the clear.
func (s *sealer) sealedID() uint32 {
	if s.clear {
		return 0
	}
	return s.keys[0].id
}

// seal returns the sealed envelope of data that expires at expiry, for
// the session at key.
func (s *sealer) seal(expiry time.Time, key string, data []byte) string {
	k := &s.keys[0]
	hdr := sealedHeader(expiry, k.id)
	var nonce [chacha20poly1305.NonceSizeX]byte
	rand.Read(nonce[:]) // never fails (crypto/rand)
	out := make([]byte, 0, len(hdr)+len(nonce)+len(data)+k.aead.Overhead())
	out = append(out, hdr[:]...)
	out = append(out, nonce[:]...)
	out = k.aead.Seal(out, nonce[:], data, associated(hdr[:], key))
	return string(out)
}

// open returns the data of the sealed envelope value of the session at
// key, appended to dst, or an error wrapping errUnopenable.
func (s *sealer) open(dst, value []byte, key string) ([]byte, error) {
	if len(value) < sealedHeaderSize+chacha20poly1305.NonceSizeX {
		return nil, fmt.Errorf("%w: %d bytes, shorter than a sealed envelope's header and nonce", errUnopenable, len(value))
	}
	id := binary.BigEndian.Uint32(value[envelopeHeader:])
	k, ok := s.byID(id)
	if !ok {
		return nil, fmt.Errorf("%w: sealed under key %08x, which the store was not given", errUnopenable, id)
	}
	nonce := value[sealedHeaderSize : sealedHeaderSize+chacha20poly1305.NonceSizeX]
	data, err := k.aead.Open(dst, nonce, value[sealedHeaderSize+chacha20poly1305.NonceSizeX:], associated(value[:sealedHeaderSize], key))
	if err != nil {
		return nil, fmt.Errorf("%w: it fails to authenticate under key %08x", errUnopenable, id)
	}
	return data, nil
}

// plain returns the stored value of the session at key as an envelope of
// its data in the clear: value itself, unless it is sealed, when it is
// opened into a version-1 envelope of the same expiry. Its errors wrap
// errUnopenable (a key it lacks, a value too short or that fails to
// authenticate, or no WithEncryption), and count in
// Stats.DecryptFailures.
func (s *EtcdStore) plain(key string, value []byte) ([]byte, error) {
	if !isSealed(value) {
		return value, nil
	}
	var out []byte
	var err error
	switch {
	case len(value) < sealedHeaderSize+chacha20poly1305.NonceSizeX+chacha20poly1305.Overhead:
		err = fmt.Errorf("%w: a sealed envelope of %d bytes, shorter than its header, nonce and tag", errUnopenable, len(value))
	case s.sealer == nil:
		err = fmt.Errorf("%w: the store was made without WithEncryption", errUnopenable)
	default:
		dst := make([]byte, envelopeHeader, len(value))
		copy(dst, value[:envelopeHeader])
		dst[len(envelopeMagic)] = envelopeVersion
		out, err = s.sealer.open(dst, value, key)
	}
	if err != nil {
		s.stats.decryptFailures.Add(1)
		return nil, err
	}
	return out, nil
}

// seal returns the envelope to store for data that expires at expiry at
// key: sealed with WithEncryption, else in the clear.
func (s *EtcdStore) seal(expiry time.Time, key string, data []byte) string {
	if s.sealer == nil || s.sealer.clear {
		return encodeEnvelope(expiry, data)
	}
	return s.sealer.seal(expiry, key, data)
}

// associated is the associated data of a sealed value: its header and
// the session's key.
func associated(hdr []byte, key string) []byte {
	ad := make([]byte, 0, len(hdr)+len(key))
	return append(append(ad, hdr...), key...)
}

// indexHash returns the hash of principal in the principal index entries
// of the sessions sealed under key id (0: in the clear, a SHA-256), in
// hex, and false for a key the sealer lacks.
func (s *sealer) indexHash(id uint32, principal string) (string, bool) {
	if id == 0 {
		sum := sha256.Sum256([]byte(principal))
		return hex.EncodeToString(sum[:16]), true
	}
	if s == nil {
		return "", false
	}
	k, ok := s.byID(id)
	if !ok {
		return "", false
	}
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(principal))
	return hex.EncodeToString(m.Sum(nil)[:16]), true
}

// indexIDs returns the key IDs whose index entries a principal's lookups
// read: every key's, and 0 for sessions stored in the clear.
func (s *sealer) indexIDs() []uint32 {
	if s == nil {
		return []uint32{0}
	}
	ids := []uint32{0}
	for _, k := range s.keys {
		ids = append(ids, k.id)
	}
	return ids
}
