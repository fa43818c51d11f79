package limits_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/limits"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// One row per rule of docs/API.md: the kind of error and the reason.
func TestRequestLimits(t *testing.T) {
	long := strings.Repeat("k", limits.MaxKeyBytes+1)
	fence := func(lock string, token uint64) *pb.Fence { return &pb.Fence{Lock: lock, Token: token} }
	cases := []struct {
		name   string
		req    proto.Message
		kind   error
		reason apierr.Reason
	}{
		{"ok get", &pb.GetRequest{Key: "a.b *>"}, nil, ""},
		{"empty key", &pb.GetRequest{}, apierr.ErrInvalid, apierr.ReasonEmptyKey},
		{"key too long", &pb.GetRequest{Key: long}, apierr.ErrTooLarge, apierr.ReasonKeyTooLong},
		{"key of 1024 bytes", &pb.PutRequest{Key: long[1:]}, nil, ""},
		{"unknown consistency", &pb.GetRequest{Key: "k", Consistency: 9}, apierr.ErrInvalid, apierr.ReasonInvalidConsistency},
		{"value too large", &pb.PutRequest{Key: "k", Value: make([]byte, 11)}, apierr.ErrTooLarge, apierr.ReasonValueTooLarge},
		{"ttl below 1s", &pb.PutRequest{Key: "k", TtlMs: 999}, apierr.ErrInvalid, apierr.ReasonTTLTooShort},
		{"negative ttl", &pb.PutRequest{Key: "k", TtlMs: -5}, apierr.ErrInvalid, apierr.ReasonTTLTooShort},
		{"ttl of 1s", &pb.PutRequest{Key: "k", TtlMs: 1000}, nil, ""},
		{"fence with ttl", &pb.PutRequest{Key: "k", TtlMs: 1000, Fence: fence("l", 3)}, apierr.ErrInvalid, apierr.ReasonFenceWithTTL},
		{"fence without token", &pb.PutRequest{Key: "k", Fence: fence("l", 0)}, apierr.ErrInvalid, apierr.ReasonMissingFenceToken},
		{"fence without lock", &pb.DeleteRequest{Key: "k", Fence: fence("", 3)}, apierr.ErrInvalid, apierr.ReasonEmptyFenceLock},
		{"fence lock too long", &pb.DeleteRequest{Key: "k", Fence: fence(strings.Repeat("l", 257), 3)}, apierr.ErrTooLarge, apierr.ReasonFenceLockTooLong},
		{"scan limit too large", &pb.ScanRequest{Limit: 1001}, apierr.ErrInvalid, apierr.ReasonLimitTooLarge},
		{"scan everything", &pb.ScanRequest{}, nil, ""},
		{"scan after too long", &pb.ScanRequest{After: long}, apierr.ErrTooLarge, apierr.ReasonAfterTooLong},
	}
	for _, c := range cases {
		err := limits.Request(c.req, 10)
		if c.kind == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		var e *apierr.Error
		if !errors.As(err, &e) || !errors.Is(err, c.kind) || !errors.Is(err, c.reason) {
			t.Errorf("%s: got %v (reason %q), want %v %q", c.name, err, reasonOf(err), c.kind, c.reason)
		}
	}
}

func reasonOf(err error) string {
	var e *apierr.Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
