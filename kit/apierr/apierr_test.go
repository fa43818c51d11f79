package apierr_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
)

func TestRoundTripThroughCodes(t *testing.T) {
	for _, kind := range []error{apierr.ErrInvalid, apierr.ErrNotFound, apierr.ErrConflict,
		apierr.ErrTooLarge, apierr.ErrUnavailable, apierr.ErrInternal} {
		e := apierr.New(kind, apierr.ReasonUnspecified, "m")
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

// A reason survives the trip through the headers and body of a reply and
// answers errors.Is, also wrapped; its kind answers too.
func TestReasonsMatchAcrossTheWire(t *testing.T) {
	e := apierr.Errorf(apierr.ReasonLockHeld, "lock %q is held", "x")
	back := error(apierr.FromHeaders(fmt.Sprint(e.Code()), e.Message, e.Reason))
	wrapped := fmt.Errorf("acquire: %w", back)
	for _, err := range []error{e, back, wrapped} {
		if !errors.Is(err, apierr.ReasonLockHeld) || !errors.Is(err, apierr.ErrConflict) {
			t.Errorf("%v: does not match lock_held and ErrConflict", err)
		}
		if errors.Is(err, apierr.ReasonNotHeld) {
			t.Errorf("%v: matches not_held too", err)
		}
	}
	if e.Code() != 409 {
		t.Errorf("lock_held is %d, want 409", e.Code())
	}
}

// Every reason is a snake_case word with one kind (the watch end reasons and
// "error" have none), and docs/API.md names each one.
func TestReasonsAreDocumented(t *testing.T) {
	api, err := os.ReadFile("../../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	word := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	for _, r := range apierr.Reasons() {
		if !word.MatchString(string(r)) {
			t.Errorf("reason %q is not snake_case", r)
		}
		if !strings.Contains(string(api), "`"+string(r)+"`") {
			t.Errorf("docs/API.md does not list reason `%s`", r)
		}
	}
}

// A passed deadline is a 503 timeout wherever it is classified.
func TestDeadlineIsUnavailable(t *testing.T) {
	err := fmt.Errorf("waiting: %w", context.DeadlineExceeded)
	if e := apierr.From(err); e.Code() != 503 || !errors.Is(e, apierr.ReasonTimeout) {
		t.Errorf("deadline: %d %s, want 503 timeout", e.Code(), e.Reason)
	}
	if got := apierr.Code(err); got != 503 {
		t.Errorf("Code(deadline) = %d, want 503", got)
	}
	if got := apierr.Code(nil); got != 200 {
		t.Errorf("Code(nil) = %d, want 200", got)
	}
}

func TestOutcome(t *testing.T) {
	for code, want := range map[int]string{200: "ok", 400: "invalid", 404: "not_found", 409: "conflict",
		413: "too_large", 503: "unavailable", 500: "error", 418: "error"} {
		if got := apierr.Outcome(code); got != want {
			t.Errorf("Outcome(%d) = %q, want %q", code, got, want)
		}
	}
}
