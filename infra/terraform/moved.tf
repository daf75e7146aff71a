# Addresses this module has renamed: Terraform moves what a state holds under the old address instead of replacing it.
# The subnets, route tables and their associations became one for_each resource each (network.tf).
moved {
  from = aws_subnet.public_subnet_a[0]
  to   = aws_subnet.subnet["public_subnet_a"]
}
moved {
  from = aws_subnet.public_subnet_b[0]
  to   = aws_subnet.subnet["public_subnet_b"]
}
moved {
  from = aws_subnet.private_subnet_a[0]
  to   = aws_subnet.subnet["private_subnet_a"]
}
moved {
  from = aws_subnet.private_subnet_b[0]
  to   = aws_subnet.subnet["private_subnet_b"]
}
moved {
  from = aws_route_table.public_route_table[0]
  to   = aws_route_table.route_table["public"]
}
moved {
  from = aws_route_table.private_route_table[0]
  to   = aws_route_table.route_table["private"]
}
moved {
  from = aws_route_table_association.public_subnet_a_route_table[0]
  to   = aws_route_table_association.subnet_route_table["public_subnet_a"]
}
moved {
  from = aws_route_table_association.public_subnet_b_route_table[0]
  to   = aws_route_table_association.subnet_route_table["public_subnet_b"]
}
moved {
  from = aws_route_table_association.private_subnet_a_route_table[0]
  to   = aws_route_table_association.subnet_route_table["private_subnet_a"]
}
moved {
  from = aws_route_table_association.private_subnet_b_route_table[0]
  to   = aws_route_table_association.subnet_route_table["private_subnet_b"]
}

# The node groups and their launch templates became one for_each resource each over local.node_groups (eks.tf).
moved {
  from = aws_launch_template.cpu_node_launch_template
  to   = aws_launch_template.node_launch_template["cpu"]
}
moved {
  from = aws_launch_template.gpu_node_launch_template
  to   = aws_launch_template.node_launch_template["gpu"]
}
moved {
  from = aws_eks_node_group.cpu_node_group
  to   = aws_eks_node_group.node_group["cpu"]
}
moved {
  from = aws_eks_node_group.gpu_node_group
  to   = aws_eks_node_group.node_group["gpu"]
}

# The load balancer controller's and the cluster autoscaler's IRSA roles and policies: one for_each pair over
# local.controller_roles (eks.tf).
moved {
  from = aws_iam_role.load_balancer_controller_role
  to   = aws_iam_role.controller_role["load_balancer_controller"]
}
moved {
  from = aws_iam_role.cluster_autoscaler_role
  to   = aws_iam_role.controller_role["cluster_autoscaler"]
}
moved {
  from = aws_iam_role_policy.load_balancer_controller_role
  to   = aws_iam_role_policy.controller_role["load_balancer_controller"]
}
moved {
  from = aws_iam_role_policy.cluster_autoscaler_role
  to   = aws_iam_role_policy.controller_role["cluster_autoscaler"]
}
