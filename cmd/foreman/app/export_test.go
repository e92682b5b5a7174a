package app

// Crash ends a as a kill would, as far as one process can within itself: the embedded
// NATS server goes first, without a drain or any component's orderly stop (no job handed
// back, no presence withdrawn, no waiting caller answered), so nothing a's parts do after
// it reaches the store; then its HTTP server and components are dropped. A new Start on
// the same data directory is then the restart.
func (a *App) Crash() {
	if a.natsSrv != nil {
		a.natsSrv.Shutdown()
	}
	if a.nc != nil {
		a.nc.Close()
	}
	if a.http != nil {
		_ = a.http.Close()
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	a.stopOnce.Do(func() {}) // a later Shutdown (a test's cleanup) has nothing left to stop
}
