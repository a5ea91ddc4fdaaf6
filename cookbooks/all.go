package cookbooks

// All returns every cookbook, in the order `cookbook list` shows them.
func All() []Cookbook {
	return []Cookbook{
		AddNode(),            // create a server of a role and join it
		RemoveNode(),         // drain a node, remove it, delete its server
		ReplaceNodes(),       // replace a role's nodes by new ones on an image (OS upgrade)
		RollReboot(),         // reboot nodes in batches, proven, with health gates
		RebootStuckWorkers(), // reboot workers NotReady for too long (hard when SSH cannot reach them)
		UpgradeNode(),        // upgrade one worker's Kubernetes packages
		UpgradeCluster(),     // upgrade the workers' Kubernetes packages in batches
		Drain(),              // cordon + drain one node
		Cordon(),             // cordon one node
		Uncordon(),           // uncordon one node
		ListNodes(),          // servers and nodes side by side (read-only)
	}
}
