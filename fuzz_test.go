package etcdstore

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// FuzzEnvelope checks the value envelope on arbitrary bytes from etcd and
// arbitrary sessions from SCS.
//
// value is anything a key under the prefix may hold: decodeEnvelope must
// not panic on it, must return a value without the magic whole as a
// legacy value, and must accept a value with the magic only when it is
// exactly the envelope encodeEnvelope writes for the expiry and data it
// returns.
//
// ns and data are a session to write: every expiry the envelope can hold
// (Unix nanoseconds in an int64, the store's whole supported range) and
// any data, including data that itself looks like an envelope, must come
// back unchanged.
//
// The seed corpus is in testdata/fuzz/FuzzEnvelope. Run with
//
//	go test -run '^$' -fuzz '^FuzzEnvelope$' -fuzztime 60s .
func FuzzEnvelope(f *testing.F) {
	f.Fuzz(func(t *testing.T, value []byte, ns int64, data []byte) {
		expiry, hasExpiry, got, err := decodeEnvelope(value)
		magic := bytes.HasPrefix(value, []byte(envelopeMagic))
		switch {
		case err != nil:
			if !magic {
				t.Fatalf("decodeEnvelope(%q) = error %v for a value without the magic, want it read as a legacy value", value, err)
			}
			if hasExpiry || got != nil {
				t.Fatalf("decodeEnvelope(%q) = hasExpiry %v, data %q with error %v, want neither", value, hasExpiry, got, err)
			}
		case !hasExpiry:
			if magic {
				t.Fatalf("decodeEnvelope(%q) read a value with the magic as a legacy value", value)
			}
			if !bytes.Equal(got, value) {
				t.Fatalf("decodeEnvelope(%q) = legacy data %q, want the whole value", value, got)
			}
		default:
			if re := encodeEnvelope(expiry, got); re != string(value) {
				t.Fatalf("decodeEnvelope(%q) = expiry %d, data %q, which encode to %q", value, expiry.UnixNano(), got, re)
			}
		}

		want := time.Unix(0, ns)
		enc := encodeEnvelope(want, data)
		if len(enc) != envelopeHeader+len(data) || !strings.HasPrefix(enc, envelopeMagic) {
			t.Fatalf("encodeEnvelope(%d, %q) = %q, want the %d-byte header then the data", ns, data, enc, envelopeHeader)
		}
		expiry, hasExpiry, got, err = decodeEnvelope([]byte(enc))
		if err != nil || !hasExpiry {
			t.Fatalf("decodeEnvelope(encodeEnvelope(%d, %q)) = hasExpiry %v, error %v, want the expiry", ns, data, hasExpiry, err)
		}
		if !expiry.Equal(want) || expiry.UnixNano() != ns {
			t.Fatalf("round trip of expiry %d gave %d", ns, expiry.UnixNano())
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("round trip of data %q gave %q", data, got)
		}
	})
}

// FuzzTokenKey checks the mapping between tokens and keys for any
// non-empty prefix and any token: the key round-trips to the token and
// lies in the range [prefix, rangeEnd(prefix)) that All reads, compared
// as bytes as etcd compares keys; and any key lies in that range exactly
// when it begins with prefix, so All never lists a key of another prefix.
// other is a key to test that on, beside keys built from prefix and its
// range end.
//
// The seed corpus is in testdata/fuzz/FuzzTokenKey. Run with
//
//	go test -run '^$' -fuzz '^FuzzTokenKey$' -fuzztime 60s .
func FuzzTokenKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, prefix, token, other string) {
		if prefix == "" {
			return // NewWithPrefix refuses an empty prefix
		}
		end := rangeEnd(prefix)
		// etcd reads a range end of "\x00" as "every key from the start";
		// only a prefix of 0xff bytes alone has no greater key to end at.
		unbounded := end == "\x00"
		if unbounded != allFF(prefix) {
			t.Fatalf("rangeEnd(%q) = %q", prefix, end)
		}
		if !unbounded && end <= prefix {
			t.Fatalf("rangeEnd(%q) = %q, not after the prefix", prefix, end)
		}
		inRange := func(key string) bool {
			return key >= prefix && (unbounded || key < end)
		}

		key := keyFor(prefix, token)
		if !inRange(key) {
			t.Fatalf("keyFor(%q, %q) = %q, outside [%q, %q)", prefix, token, key, prefix, end)
		}
		if got := tokenFor(prefix, []byte(key)); got != token {
			t.Fatalf("tokenFor(%q, keyFor(%q, %q)) = %q", prefix, prefix, token, got)
		}
		if next := nextKey([]byte(key)); next <= key || !inRange(next) {
			t.Fatalf("nextKey(%q) = %q, not after the key inside the range", key, next)
		}

		last := prefix[len(prefix)-1]
		for _, k := range []string{
			other,
			prefix + other,
			end,
			end + other,
			prefix[:len(prefix)-1],
			prefix[:len(prefix)-1] + string([]byte{last - 1}) + "\xff\xff",
			prefix[:len(prefix)-1] + string([]byte{last + 1}),
			token,
			token + prefix,
		} {
			if inRange(k) != strings.HasPrefix(k, prefix) {
				t.Fatalf("key %q: in [%q, %q) is %v, but begins with the prefix is %v", k, prefix, end, inRange(k), strings.HasPrefix(k, prefix))
			}
		}
	})
}

// allFF reports whether s consists of 0xff bytes alone. (strings.Trim
// would not do: it reads "\xff" as a rune, and so trims any invalid
// UTF-8 byte.)
func allFF(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != 0xff {
			return false
		}
	}
	return true
}
