package broker

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"
)

// Priority is a job's scheduling class: the worker runs a higher class before a lower
// one (see docs/adr/0027-priority-classes-and-fair-turns.md).
type Priority string

// The priority classes, highest first.
const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// ErrBadPriority is returned for a priority that is not one of the classes.
var ErrBadPriority = errors.New("invalid priority")

// ParsePriority accepts exactly "high", "normal" and "low".
func ParsePriority(s string) (Priority, error) {
	switch p := Priority(s); p {
	case PriorityHigh, PriorityNormal, PriorityLow:
		return p, nil
	}
	if len(s) > maxQuoted {
		return "", PriorityTooLong(len(s))
	}
	return "", fmt.Errorf("%w: priority %q: must be high, normal or low", ErrBadPriority, s)
}

// PriorityTooLong is ParsePriority's error for a value of n bytes, more than maxQuoted:
// none is a priority, and it is only measured.
func PriorityTooLong(n int) error {
	return fmt.Errorf("%w: priority of %d bytes: must be high, normal or low", ErrBadPriority, n)
}

// ProgramTooLong is ValidateProgram's error for a name of n bytes, more than maxQuoted:
// none is a program, and it is only measured.
func ProgramTooLong(n int) error {
	return fmt.Errorf("%w: %d bytes: must be 1 to 64 of A-Z a-z 0-9 . _ -", ErrBadProgram, n)
}

// maxQuoted is the longest value a refusal here quotes back. A longer one, which no valid
// priority or program is, is only measured: it may be as large as a request body, and a
// message quoting it could outgrow a NATS reply.
const maxQuoted = 64

// Rank orders the classes: 0 is the highest. An empty priority (records from before
// classes) is normal.
func (p Priority) Rank() int {
	switch p {
	case PriorityHigh:
		return 0
	case PriorityLow:
		return 2
	}
	return 1
}

// OrNormal returns p, or normal when p is empty (records from before classes).
func (p Priority) OrNormal() Priority {
	if p == "" {
		return PriorityNormal
	}
	return p
}

// ErrBadProgram is returned for a program name outside the allowed form.
var ErrBadProgram = errors.New("invalid program name")

var programRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateProgram accepts 1 to 64 of [A-Za-z0-9._-].
func ValidateProgram(name string) error {
	if len(name) > maxQuoted {
		return ProgramTooLong(len(name))
	}
	if !programRE.MatchString(name) {
		return fmt.Errorf("%w: %q: must be 1 to 64 of A-Z a-z 0-9 . _ -", ErrBadProgram, name)
	}
	return nil
}

// QueuedOfProgram counts the jobs of one program in the queue (running and retrying ones
// included, as Depth counts them); "" counts the anonymous program's. It is one stream
// info request filtered by subject: the program is the last token of its queue subjects.
func (s *Store) QueuedOfProgram(ctx context.Context, program string) (uint64, error) {
	ptok, err := programToken(program)
	if err != nil {
		return 0, err
	}
	n, err := s.countSubjects(ctx, queuePrefix+"*.*.*."+ptok)
	if err != nil || program != "" {
		return n, err
	}
	// The anonymous program's default jobs sit on the model's plain subject.
	plain, err := s.countSubjects(ctx, queuePrefix+"*")
	return n + plain, err
}

func (s *Store) countSubjects(ctx context.Context, filter string) (uint64, error) {
	info, err := s.queue.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("broker: queue info %s: %w", filter, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}
