package gateway

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

// The budget's count per program never leaks (ADR-0126): holds of several programs
// taking and giving back at once, as bodies growing, refused part way, a zstd body's
// compressed form given back after its decoded form grew, and released twice, leave
// nothing held once every hold is released; meanwhile the per-program counts always add
// up to the bytes used. Run with -race.
func TestBodyBudgetSharesBalanceUnderConcurrency(t *testing.T) {
	t.Parallel()
	b := &bodyBudget{limit: 1 << 20}
	check := func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		var sum int64
		for p, n := range b.held {
			if n <= 0 {
				return fmt.Errorf("program %q kept with %d bytes", p, n)
			}
			sum += n
		}
		if used := b.used.Load(); sum != used {
			return fmt.Errorf("programs hold %d bytes together, the budget counts %d used", sum, used)
		}
		return nil
	}
	var wg sync.WaitGroup
	var served, refused sync.Map
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			program := fmt.Sprint("p", g%4)
			if g%4 == 3 {
				program = "" // the anonymous program
			}
			for i := range 200 {
				size := int64(1+(g*7919+i*104729)%(600<<10)) + 1
				h := b.hold(program)
				first := min(size, bodyFirstRead)
				exact := i%2 == 0
				if exact && (!h.fits(min(size, bodyRoomAhead)) || !h.take(first)) {
					refused.Store(g*1000+i, true)
					continue
				}
				if !exact {
					first = 0
				}
				body, err := readGrowing(bytes.NewReader(make([]byte, size)), size, first, exact, h)
				if err == nil && i%3 == 0 {
					// A decoded form grows beside the body, which is then given back.
					if _, derr := readGrowing(bytes.NewReader(make([]byte, size/2)), size, 0, false, h); derr == nil {
						h.give(int64(cap(body)))
					}
				}
				if err != nil {
					refused.Store(g*1000+i, true)
				} else {
					served.Store(g*1000+i, true)
				}
				if cerr := check(); cerr != nil {
					t.Error(cerr)
					h.release()
					return
				}
				h.release()
				h.release()
			}
		}()
	}
	wg.Wait()
	if err := check(); err != nil {
		t.Fatal(err)
	}
	if used := b.used.Load(); used != 0 || len(b.held) != 0 {
		t.Errorf("every hold released: %d bytes used, %d programs holding (%v); want none", used, len(b.held), b.held)
	}
	var nServed, nRefused int
	served.Range(func(any, any) bool { nServed++; return true })
	refused.Range(func(any, any) bool { nRefused++; return true })
	if nServed == 0 || nRefused == 0 {
		t.Errorf("%d bodies served, %d refused; want some of each, or the test proves little", nServed, nRefused)
	}
}

// bodiesHeldAtOnce reads declared bodies of size, one after another, each kept held, for
// program(i), until one is refused; it returns how many were held at once.
func bodiesHeldAtOnce(t *testing.T, budget, size int64, program func(i int) string) int {
	t.Helper()
	b := &bodyBudget{limit: budget}
	for i := range 16 {
		h := b.hold(program(i))
		first := min(size, bodyFirstRead)
		if !h.fits(min(size, bodyRoomAhead)) || !h.take(first) {
			return i
		}
		if _, err := readGrowing(bytes.NewReader(make([]byte, size)), size, first, true, h); err != nil {
			return i
		}
	}
	t.Fatalf("16 bodies of %d bytes held at once under a budget of %d", size, budget)
	return 0
}

// What README says the default budget (128 MiB) holds at once: of the largest bodies
// (32 MiB), one of a program alone and two of two programs, a third program's refused at
// its last growth (ADR-0048's budget alone took three); of 24 MiB, two of a program
// alone and three of three programs (it took four).
func TestBodyBudgetDefaultHoldsWhatTheREADMESays(t *testing.T) {
	t.Parallel()
	one := func(int) string { return "" }
	each := func(i int) string { return fmt.Sprint("p", i) }
	for _, c := range []struct {
		size      int64
		alone, by int
	}{
		{32 << 20, 1, 2},
		{24 << 20, 2, 3},
	} {
		if got := bodiesHeldAtOnce(t, 128<<20, c.size, one); got != c.alone {
			t.Errorf("bodies of %d MiB at once, one program: %d; README says %d", c.size>>20, got, c.alone)
		}
		if got := bodiesHeldAtOnce(t, 128<<20, c.size, each); got != c.by {
			t.Errorf("bodies of %d MiB at once, a program each: %d; README says %d", c.size>>20, got, c.by)
		}
	}
}
