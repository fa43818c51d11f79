// Package apierr is latchkey's one error vocabulary. Every failure a service
// can answer with is an *Error whose Kind is one of the sentinels below; the
// sentinels map once, here, to the HTTP-like codes of docs/API.md, and back
// again on the client side, so errors.Is works across the wire.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// The kinds of failure. Compare with errors.Is.
var (
	// ErrInvalid: the request is malformed or breaks a rule (400).
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: the named thing does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a precondition failed: revision mismatch, lock held,
	// stale fence, token no longer holds (409).
	ErrConflict = errors.New("conflict")
	// ErrTooLarge: a size limit was exceeded (413).
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: a dependency is down or overloaded; retry (503).
	ErrUnavailable = errors.New("unavailable")
	// ErrInternal: a bug or an unexpected failure (500).
	ErrInternal = errors.New("internal error")
)

// codes is the one table from a kind to its status code and to the outcome
// word metrics and spans label it with.
var codes = []struct {
	kind    error
	code    int
	outcome string
}{
	{ErrInvalid, 400, "invalid"},
	{ErrNotFound, 404, "not_found"},
	{ErrConflict, 409, "conflict"},
	{ErrTooLarge, 413, "too_large"},
	{ErrUnavailable, 503, "unavailable"},
	{ErrInternal, 500, "error"},
}

// Error is a failure with a kind, a stable machine-readable reason and a
// sentence for humans.
type Error struct {
	Kind error // one of the sentinels above
	// Reason is the wire word of one of the Reason constants (or of a newer
	// server's); compare with errors.Is(err, ReasonX), not as a string.
	Reason  string
	Message string // a sentence that says what went wrong and which limit
}

func (e *Error) Error() string { return e.Message }

// Unwrap makes errors.Is(err, ErrConflict) and friends work.
func (e *Error) Unwrap() error { return e.Kind }

// Is makes errors.Is(err, ReasonLockHeld) and friends work.
func (e *Error) Is(target error) bool {
	r, ok := target.(Reason)
	return ok && string(r) == e.Reason
}

// Code is the API status code of the error.
func (e *Error) Code() int { return CodeOf(e.Kind) }

// New builds an *Error of the given kind. Errorf, which takes the kind
// from the reason, is the one to use; New and the shorthands below stay for
// call sites that name the kind as well (it must be the reason's).
func New(kind error, reason Reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: string(reason), Message: fmt.Sprintf(format, args...)}
}

// Invalid builds a 400 (see Errorf).
func Invalid(reason Reason, format string, args ...any) *Error {
	return New(ErrInvalid, reason, format, args...)
}

// Conflict builds a 409 (see Errorf).
func Conflict(reason Reason, format string, args ...any) *Error {
	return New(ErrConflict, reason, format, args...)
}

// TooLarge builds a 413 (see Errorf).
func TooLarge(reason Reason, format string, args ...any) *Error {
	return New(ErrTooLarge, reason, format, args...)
}

// Unavailable builds a 503 (see Errorf).
func Unavailable(reason Reason, format string, args ...any) *Error {
	return New(ErrUnavailable, reason, format, args...)
}

// CodeOf returns the API code for a sentinel kind (500 for anything else).
func CodeOf(kind error) int {
	for _, c := range codes {
		if kind == c.kind {
			return c.code
		}
	}
	return 500
}

// KindOf returns the sentinel for an API code (ErrInternal if unknown).
func KindOf(code int) error {
	for _, c := range codes {
		if code == c.code {
			return c.kind
		}
	}
	return ErrInternal
}

// Outcome names an API status code for metric labels and span attributes:
// ok (200), invalid, not_found, conflict, too_large, unavailable, or error
// for 500 and any code the table does not know.
func Outcome(code int) string {
	if code == 200 {
		return "ok"
	}
	for _, c := range codes {
		if code == c.code {
			return c.outcome
		}
	}
	return "error"
}

// From turns any error into an *Error. A passed deadline
// (context.DeadlineExceeded) is a 503 timeout: the caller may retry with
// more time; this is the one place that says so. Other errors that are not
// already *Error become internal errors; callers wrap dependency failures
// they understand (no responders, JetStream refusals) before they get here.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: ErrUnavailable, Reason: string(ReasonTimeout), Message: err.Error()}
	}
	for _, c := range codes {
		if errors.Is(err, c.kind) {
			return &Error{Kind: c.kind, Reason: string(ReasonUnspecified), Message: err.Error()}
		}
	}
	return &Error{Kind: ErrInternal, Reason: string(ReasonInternal), Message: err.Error()}
}

// Code is the status code a handler's outcome answers with: 200 for nil,
// else From(err).Code().
func Code(err error) int {
	if err == nil {
		return 200
	}
	return From(err).Code()
}

// Headers used by nats.go/micro for service errors.
const (
	HeaderCode    = "Nats-Service-Error-Code"
	HeaderMessage = "Nats-Service-Error"
)

// FromHeaders rebuilds the error carried by a reply's headers, or returns
// nil when the reply is not an error. reason may be empty when the body did
// not name one.
func FromHeaders(code, message, reason string) *Error {
	if code == "" {
		return nil
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		n = 500
	}
	if reason == "" {
		reason = string(ReasonUnspecified)
	}
	return &Error{Kind: KindOf(n), Reason: reason, Message: message}
}
