package broker_test

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Job ids made one after the other sort in that order, though each new reading of the
// server's clock steps ServerNow back by its answer's transit: GET /jobs lists by id. A
// step back of the server's clock itself (an hour) is taken as it is.
func TestJobIDsSortInTheOrderTheyWereMade(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	s := b.Store
	prev := s.NewID()
	for i := range 50 {
		// A new reading 3 ms behind the last one's count: the answer spent them in transit.
		s.NoteServerTime(s.ServerNow().Add(-3 * time.Millisecond))
		id := s.NewID()
		if id <= prev {
			t.Fatalf("id %d, %s, made after %s, sorts before it", i, id, prev)
		}
		prev = id
	}
	back := s.ServerNow().Add(-time.Hour)
	s.NoteServerTime(back)
	id := s.NewID()
	u, err := ulid.ParseStrict(id)
	if err != nil {
		t.Fatal(err)
	}
	if got := ulid.Time(u.Time()); got.Sub(back) > time.Minute || back.Sub(got) > time.Minute {
		t.Errorf("after the server's clock was set back an hour, an id at %v, want about %v", got, back)
	}
}
