// Command ipvirtctl inspects and administers ipvirtd.
package main

import (
	"os"

	"github.com/ipvirt/ipvirt/internal/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
