package wire_test

import (
	"errors"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/wire"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

func TestIsJSON(t *testing.T) {
	cases := []struct {
		name string
		hdr  nats.Header
		body string
		want bool
	}{
		{"brace", nil, `{"key":"a"}`, true},
		{"leading space", nil, "  \n{}", true},
		{"content type", nats.Header{"Content-Type": {"application/json"}}, `[]`, true},
		{"protobuf", nil, "\x0a\x01a", false},
		{"empty", nil, "", false},
	}
	for _, c := range cases {
		if got := wire.IsJSON(c.hdr, []byte(c.body)); got != c.want {
			t.Errorf("%s: IsJSON = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	rev := uint64(0)
	in := &pb.PutRequest{Key: "a.b c>*", Value: []byte{0, 1, 2}, ExpectedRevision: &rev, TtlMs: 1500}
	for _, asJSON := range []bool{false, true} {
		b, err := wire.Encode(in, asJSON)
		if err != nil {
			t.Fatal(err)
		}
		out := &pb.PutRequest{}
		if err := wire.Decode(b, asJSON, out); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(in, out) {
			t.Errorf("json=%v: got %v, want %v", asJSON, out, in)
		}
	}
}

func TestSnakeAndCamelCaseRequests(t *testing.T) {
	for _, body := range []string{`{"key":"k","expected_revision":"7"}`, `{"key":"k","expectedRevision":7}`} {
		m := &pb.PutRequest{}
		if err := wire.Decode([]byte(body), true, m); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if m.GetExpectedRevision() != 7 || m.ExpectedRevision == nil {
			t.Errorf("%s: expected_revision = %v", body, m.ExpectedRevision)
		}
	}
}

func TestMalformedIsInvalid(t *testing.T) {
	for _, c := range []struct {
		body   string
		asJSON bool
	}{{`{"key":`, true}, {`{"nope":1}`, true}, {"\xff\xff\xff", false}} {
		err := wire.Decode([]byte(c.body), c.asJSON, &pb.GetRequest{})
		if !errors.Is(err, apierr.ErrInvalid) {
			t.Errorf("%q: err = %v, want ErrInvalid", c.body, err)
		}
	}
}
