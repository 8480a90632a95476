package etcdstore

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// The value envelope: what Commit writes at a session's key.
//
//	offset  size  field
//	0       3     magic "\x00ES"
//	3       1     version, 1
//	4       8     expiry, Unix nanoseconds, big-endian int64
//	12      ...   the session data, as SCS's codec encoded it
//
// The store needs the expiry beside the data because etcd only bounds a
// key's lifetime from below: a lease may be shared by sessions with
// different expiries, the leader expires leases up to a loop interval
// late, and a leader change gives every lease its full TTL again
// (server/lease/lessor.go, Promote).
//
// A tombstone is the envelope of a deleted session: expiry 0 (the Unix
// epoch), and as data why and when it ended (tombstoneSize, 21 bytes). Every end of a session leaves it at the
// session's key, on a lease that lasts the store's request bound
// (WithMaxRequestDuration), and then goes with the lease; no commit writes
// over it (see commit.go). Readers see a session that expired in 1970: absent, to this
// release and to those before it.
//
// A sealed envelope (WithEncryption, crypt.go) is version 2: the same
// header, then the ID of the key that sealed it, the nonce, and the data
// sealed with its 16-byte tag, 56 bytes more than the data:
//
//	offset  size  field
//	0       3     magic "\x00ES"
//	3       1     version, 2
//	4       8     expiry, Unix nanoseconds, big-endian int64
//	12      4     key ID, big-endian
//	16      24    nonce, random
//	40      ...   the session data, sealed with XChaCha20-Poly1305; the
//	              associated data is bytes 0 to 16 and the session's key
//
// The expiry stays in the clear, so every read can tell a live session
// without a key, and tombstones stay version 1.
//
// The magic begins with a NUL byte, which neither of SCS's codecs (gob,
// JSON) ever writes first, so a value without it is raw codec bytes
// written by github.com/alexedwards/scs/etcdstore and is read as is.
const (
	envelopeMagic   = "\x00ES"
	envelopeVersion = 1
	sealedVersion   = 2
	envelopeHeader  = len(envelopeMagic) + 1 + 8
	// sealedHeaderSize is the sealed envelope's header: the envelope's and
	// the key ID.
	sealedHeaderSize = envelopeHeader + 4
)

// tombstone is the envelope every tombstone begins with; alone, it is a
// tombstone without a reason.
const tombstone = envelopeMagic + "\x01" + "\x00\x00\x00\x00\x00\x00\x00\x00"

// tombstoneSize is the size of a tombstone with its reason: the envelope
// of no data, then as its data the reason (1 byte) and when the session
// ended (Unix nanoseconds, big-endian int64), 21 bytes. Neither says
// anything of the session's data or token.
const tombstoneSize = envelopeHeader + 1 + 8

// tombstoneOf returns the tombstone of a session that ended at for reason.
func tombstoneOf(reason EndReason, at time.Time) string {
	var b [tombstoneSize]byte
	copy(b[:], tombstone)
	b[envelopeHeader] = byte(reason)
	binary.BigEndian.PutUint64(b[envelopeHeader+1:], uint64(at.UnixNano()))
	return string(b[:])
}

// isTombstone reports whether a stored value is a tombstone: the
// envelope of no data that expired at the Unix epoch, with or without a
// reason.
func isTombstone(value []byte) bool {
	return len(value) >= len(tombstone) && string(value[:len(tombstone)]) == tombstone
}

// tombstoneReason returns why and when the session whose tombstone is
// value ended: EndUnknown and the zero time for a tombstone without a
// reason, or with one this release does not know.
func tombstoneReason(value []byte) (EndReason, time.Time) {
	if len(value) != tombstoneSize || !isTombstone(value) {
		return EndUnknown, time.Time{}
	}
	r := EndReason(value[envelopeHeader])
	if r > endReasons {
		return EndUnknown, time.Time{}
	}
	return r, time.Unix(0, int64(binary.BigEndian.Uint64(value[envelopeHeader+1:])))
}

// encodeEnvelope returns the envelope for data that expires at expiry, as
// a string because that is what clientv3.OpPut takes: building it with a
// strings.Builder costs one allocation and no further copy.
func encodeEnvelope(expiry time.Time, data []byte) string {
	var hdr [envelopeHeader]byte
	copy(hdr[:], envelopeMagic)
	hdr[len(envelopeMagic)] = envelopeVersion
	binary.BigEndian.PutUint64(hdr[len(envelopeMagic)+1:], uint64(expiry.UnixNano()))

	var b strings.Builder
	b.Grow(envelopeHeader + len(data))
	b.Write(hdr[:])
	b.Write(data)
	return b.String()
}

// sealedHeader returns the header of a sealed envelope.
func sealedHeader(expiry time.Time, id uint32) [sealedHeaderSize]byte {
	var hdr [sealedHeaderSize]byte
	copy(hdr[:], envelopeMagic)
	hdr[len(envelopeMagic)] = sealedVersion
	binary.BigEndian.PutUint64(hdr[len(envelopeMagic)+1:], uint64(expiry.UnixNano()))
	binary.BigEndian.PutUint32(hdr[envelopeHeader:], id)
	return hdr
}

// sealedBy returns the key ID of a sealed envelope, or 0 for any other
// value.
func sealedBy(value []byte) uint32 {
	if !isSealed(value) || len(value) < sealedHeaderSize {
		return 0
	}
	return binary.BigEndian.Uint32(value[envelopeHeader:])
}

// isSealed reports whether value is a sealed envelope.
func isSealed(value []byte) bool {
	return len(value) > len(envelopeMagic) && string(value[:len(envelopeMagic)]) == envelopeMagic && value[len(envelopeMagic)] == sealedVersion
}

// envelopeExpiry returns the expiry in the header of an envelope, sealed
// or not, and false for a value that has none (a legacy value, or one too
// short).
func envelopeExpiry(value []byte) (time.Time, bool) {
	if len(value) < envelopeHeader || string(value[:len(envelopeMagic)]) != envelopeMagic {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(value[len(envelopeMagic)+1:]))), true
}

// decodeEnvelope splits a stored value into its expiry and data. The data
// aliases value; no copy is made.
//
// A value without the magic is a legacy value: it is returned whole with
// hasExpiry false, and its key's lease alone bounds its life. A value with
// the magic that is too short or of another version is an error.
func decodeEnvelope(value []byte) (expiry time.Time, hasExpiry bool, data []byte, err error) {
	if len(value) < len(envelopeMagic) || string(value[:len(envelopeMagic)]) != envelopeMagic {
		return time.Time{}, false, value, nil
	}
	if len(value) < envelopeHeader {
		return time.Time{}, false, nil, fmt.Errorf("envelope of %d bytes is shorter than its %d-byte header", len(value), envelopeHeader)
	}
	if v := value[len(envelopeMagic)]; v != envelopeVersion {
		return time.Time{}, false, nil, fmt.Errorf("envelope version %d is not supported (this release reads versions %d and %d)", v, envelopeVersion, sealedVersion)
	}
	ns := int64(binary.BigEndian.Uint64(value[len(envelopeMagic)+1:]))
	return time.Unix(0, ns), true, value[envelopeHeader:], nil
}
