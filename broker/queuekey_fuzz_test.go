package broker_test

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// FuzzQueueKey checks that a request body (outside input) and a program name give a queue
// key that is safe in a subject, parses back to itself and names a valid consumer, or a
// clear error for a bad program.
func FuzzQueueKey(f *testing.F) {
	for _, s := range []struct{ body, program string }{
		{`{"options":{"num_ctx":256}}`, "batch"}, {`{}`, ""}, {`{"options":{"num_ctx":1e300,"use_mmap":true}}`, "a.b"},
		{`{"options":{"num_gpu":-1,"num_thread":"x"}}`, "A_Z-0"}, {`[1,2]`, "a b"}, {`{"options":`, strings.Repeat("p", 64)},
	} {
		f.Add(s.body, s.program)
	}
	f.Fuzz(func(t *testing.T, body, program string) {
		for _, class := range []broker.Priority{"", broker.PriorityHigh, broker.PriorityLow} {
			k, err := broker.KeyOf(&broker.Job{Model: "tiny-a", Kind: broker.KindChat, Priority: class, Program: program}, []byte(body))
			if err != nil {
				if broker.ValidateProgram(program) == nil {
					t.Fatalf("KeyOf(%q, %q): %v for a valid program", body, program, err)
				}
				continue
			}
			s := k.String()
			if strings.ContainsAny(s, "*> \t\r\n") {
				t.Fatalf("key %q is unsafe in a subject", s)
			}
			back, err := broker.ParseQueueKey(s)
			if err != nil || back != k || back.ProgramName() != program {
				t.Fatalf("ParseQueueKey(%q) = %+v, %v; want %+v (program %q)", s, back, err, k, program)
			}
			if n := broker.ConsumerName(s); len(n) > 255 || strings.ContainsAny(n, ".*> ") {
				t.Fatalf("consumer name %q", n)
			}
		}
	})
}
