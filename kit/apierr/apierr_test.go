package apierr_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
)

func TestRoundTripThroughCodes(t *testing.T) {
	for _, kind := range []error{apierr.ErrInvalid, apierr.ErrNotFound, apierr.ErrConflict,
		apierr.ErrTooLarge, apierr.ErrUnavailable, apierr.ErrInternal} {
		e := apierr.New(kind, "r", "m")
		back := apierr.FromHeaders(fmt.Sprint(e.Code()), e.Message, e.Reason)
		if !errors.Is(back, kind) {
			t.Errorf("%v: code %d came back as %v", kind, e.Code(), back.Kind)
		}
	}
}

func TestFromWrapsPlainErrors(t *testing.T) {
	wrapped := fmt.Errorf("shard 3: %w", apierr.ErrUnavailable)
	if got := apierr.From(wrapped).Code(); got != 503 {
		t.Errorf("wrapped unavailable: code %d, want 503", got)
	}
	if got := apierr.From(errors.New("boom")).Code(); got != 500 {
		t.Errorf("plain error: code %d, want 500", got)
	}
	if apierr.FromHeaders("", "", "") != nil {
		t.Error("no code header must mean no error")
	}
}
