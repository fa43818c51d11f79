package limits_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/limits"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

func TestValueMessageBytesCoversRealMessages(t *testing.T) {
	// The worst key and lock name: every byte a control character, which
	// JSON escapes to six.
	key := strings.Repeat("\x01", limits.MaxKeyBytes)
	lock := strings.Repeat("\x01", limits.MaxLockNameBytes)
	for _, n := range []int{0, 1, 2, 3, 1000, limits.DefaultMaxValue} {
		value := make([]byte, n)
		msgs := []proto.Message{
			&pb.GetResponse{Found: true, Key: key, Value: value, Revision: ^uint64(0)},
			&pb.PutRequest{Key: key, Value: value, ExpectedRevision: ptr(^uint64(0)), TtlMs: limits.MaxTTLMillis,
				Fence: &pb.Fence{Lock: lock, Token: ^uint64(0)}},
		}
		for _, m := range msgs {
			b, err := codec.Encode(m, true)
			if err != nil {
				t.Fatal(err)
			}
			// Headers: a JSON reply's Content-Type block is 46 bytes; a
			// request's trace context and timeout stay under 512.
			if got, limit := int64(len(b))+512, limits.ValueMessageBytes(n); got > limit {
				t.Errorf("%T with a %d-byte value is %d bytes with headers; ValueMessageBytes says %d", m, n, got, limit)
			}
		}
	}
	if got, want := limits.ValueMessageBytes(3)-limits.ValueMessageBytes(0), int64(base64.StdEncoding.EncodedLen(3)); got != want {
		t.Errorf("3 value bytes add %d, want base64's %d", got, want)
	}
}

func TestCheckMaxValue(t *testing.T) {
	const mib = 1 << 20
	largest := limits.LargestValue(mib)
	cases := []struct {
		name       string
		maxValue   int
		maxPayload int64
		ok         bool
	}{
		{"default under the default 1 MiB", 0, mib, true},
		{"512 KiB under 1 MiB", 512 * 1024, mib, true},
		{"the largest that fits", largest, mib, true},
		{"one byte past it", largest + 1, mib, false},
		{"raw value fits, its base64 does not", 900_000, mib, false},
		{"the default on a 512 KiB server", 0, 512 * 1024, false},
		{"a tiny server fits nothing", 1, 1000, false},
	}
	for _, c := range cases {
		err := limits.CheckMaxValue(c.maxValue, c.maxPayload)
		if (err == nil) != c.ok {
			t.Errorf("%s: CheckMaxValue(%d, %d) = %v, want ok %v", c.name, c.maxValue, c.maxPayload, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "max_payload") {
			t.Errorf("%s: %q does not name max_payload", c.name, err)
		}
	}
	for _, p := range []int64{1000, 64 * 1024, mib, 8 * mib} {
		n := limits.LargestValue(p)
		if n > 0 && limits.ValueMessageBytes(n) > p {
			t.Errorf("LargestValue(%d) = %d does not fit", p, n)
		}
		if limits.ValueMessageBytes(n+1) <= p {
			t.Errorf("LargestValue(%d) = %d is not the largest", p, n)
		}
	}
}

func ptr[T any](v T) *T { return &v }
