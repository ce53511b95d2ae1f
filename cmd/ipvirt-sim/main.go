// Command ipvirt-sim replays ipvirt scenarios: real login sessions running
// unmodified clients against a database server that refuses duplicate
// client addresses, with the real ipvirtd in between.
package main

import (
	"os"

	"github.com/ipvirt/ipvirt/sim/simcli"
)

func main() { os.Exit(simcli.Main(os.Args[1:])) }
