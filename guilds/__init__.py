"""The control plane: guilds, channels, roles, overwrites, bans; Discord's permission
algorithm and the strong path that puts a change in force on every gateway."""
