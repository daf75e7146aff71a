# The EKS cluster Triton and the gateway run on: private API (public only for api_public_access_cidrs), secrets
# encrypted with the platform key, every control-plane log; a CPU and a GPU node group across the two AZs; the
# vpc-cni (its own IRSA role, network policies on), coredns, kube-proxy and metrics-server add-ons; IRSA.
locals {
  issuer = replace(aws_eks_cluster.cluster.identity[0].oidc[0].issuer, "https://", "")
  irsa_trust = { for name, subject in {
    vpc_cni                   = "system:serviceaccount:kube-system:aws-node"
    load_balancer_controller  = "system:serviceaccount:kube-system:aws-load-balancer-controller"
    cluster_autoscaler        = "system:serviceaccount:kube-system:cluster-autoscaler"
    velero                    = "system:serviceaccount:velero:velero" # backup.tf
    } : name => jsonencode({
      Version = "2012-10-17"
      Statement = [{
        Effect    = "Allow"
        Principal = { Federated = aws_iam_openid_connect_provider.oidc_provider.arn }
        Action    = "sts:AssumeRoleWithWebIdentity"
        Condition = { StringEquals = { "${local.issuer}:sub" = subject, "${local.issuer}:aud" = "sts.amazonaws.com" } }
      }]
  }) }
  node_tags = merge(local.cost_tags, { "k8s.io/cluster-autoscaler/enabled" = "true" })
}

resource "aws_iam_role" "cluster_role" {
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
  managed_policy_arns = ["arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"]
}

resource "aws_cloudwatch_log_group" "cluster_log_group" {
  #checkov:skip=CKV_AWS_338:Retention is the environment's choice (log_retention_days, a year in prod as in samconfig.toml)
  name              = "/aws/eks/${local.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform_key.arn
}

resource "aws_eks_cluster" "cluster" {
  #checkov:skip=CKV_AWS_39:The public endpoint is off unless api_public_access_cidrs names networks (an office, a CI runner), and then only for them
  #checkov:skip=CKV_AWS_38:Public access is limited to api_public_access_cidrs; with none the endpoint is private only
  name     = local.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster_role.arn
  vpc_config {
    subnet_ids              = local.private_subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = local.public_api
    public_access_cidrs     = local.public_api ? var.api_public_access_cidrs : null
  }
  encryption_config {
    provider {
      key_arn = aws_kms_key.platform_key.arn
    }
    resources = ["secrets"]
  }
  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  access_config {
    authentication_mode                         = "API_AND_CONFIG_MAP"
    bootstrap_cluster_creator_admin_permissions = true
  }
  depends_on = [aws_cloudwatch_log_group.cluster_log_group]
}

data "tls_certificate" "issuer" {
  url = aws_eks_cluster.cluster.identity[0].oidc[0].issuer
}

resource "aws_iam_openid_connect_provider" "oidc_provider" {
  url             = aws_eks_cluster.cluster.identity[0].oidc[0].issuer
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = [data.tls_certificate.issuer.certificates[0].sha1_fingerprint]
}

resource "aws_security_group_rule" "triton_from_the_vpc" {
  type              = "ingress"
  security_group_id = aws_eks_cluster.cluster.vpc_config[0].cluster_security_group_id
  description       = "Triton HTTP and gRPC (8000-8001) from the VPC - the inference Lambda through the internal NLB"
  protocol          = "tcp"
  from_port         = 8000
  to_port           = 8001
  cidr_blocks       = [local.vpc_cidr]
}

resource "aws_iam_role" "node_role" {
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ec2.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
  managed_policy_arns = [
    "arn:${local.partition}:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:${local.partition}:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
  ]
}

resource "aws_iam_role" "vpc_cni_role" {
  description         = "IRSA role of the vpc-cni add-on (kube-system/aws-node)"
  assume_role_policy  = local.irsa_trust["vpc_cni"]
  managed_policy_arns = ["arn:${local.partition}:iam::aws:policy/AmazonEKS_CNI_Policy"]
}

# The cluster's controllers with their own IRSA role and inline policy (LoadBalancerControllerRole and
# ClusterAutoscalerRole in infra/platform.yaml): the policy's name and statements, as there.
locals {
  controller_roles = {
    load_balancer_controller = {
      description = "IRSA role of the AWS Load Balancer Controller (kube-system/aws-load-balancer-controller)"
      policy_name = "manage-this-clusters-load-balancers"
      statements = [
        {
          Sid    = "ReadTheNetworkAndLoadBalancers"
          Effect = "Allow"
          Action = ["ec2:Describe*", "ec2:GetSecurityGroupsForVpc", "elasticloadbalancing:Describe*", "acm:ListCertificates", "acm:DescribeCertificate",
          "wafv2:GetWebACL", "wafv2:GetWebACLForResource", "shield:GetSubscriptionState"]
          Resource = "*" # read-only calls; Describe*/List* take no resource ARNs
        },
        {
          Sid       = "ServiceLinkedRoleForElb"
          Effect    = "Allow"
          Action    = "iam:CreateServiceLinkedRole"
          Resource  = "arn:${local.partition}:iam::${local.account}:role/aws-service-role/elasticloadbalancing.amazonaws.com/*"
          Condition = { StringEquals = { "iam:AWSServiceName" = "elasticloadbalancing.amazonaws.com" } }
        },
        {
          Sid       = "CreateTaggedForThisCluster"
          Effect    = "Allow"
          Action    = ["ec2:CreateSecurityGroup", "elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"]
          Resource  = "*" # the resources do not exist yet; the request must tag them for this cluster
          Condition = { StringEquals = { "aws:RequestTag/elbv2.k8s.aws/cluster" = local.name } }
        },
        {
          Sid       = "TagWhatItCreates"
          Effect    = "Allow"
          Action    = ["ec2:CreateTags", "elasticloadbalancing:AddTags"]
          Resource  = "*" # tagging on creation; the condition limits it to this cluster's resources
          Condition = { StringEquals = { "aws:RequestTag/elbv2.k8s.aws/cluster" = local.name } }
        },
        {
          Sid    = "ChangeOnlyThisClustersResources"
          Effect = "Allow"
          Action = ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:DeleteTags",
            "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType", "elasticloadbalancing:SetSecurityGroups",
            "elasticloadbalancing:SetSubnets", "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:ModifyTargetGroup",
            "elasticloadbalancing:ModifyTargetGroupAttributes", "elasticloadbalancing:DeleteTargetGroup", "elasticloadbalancing:RemoveTags",
          "elasticloadbalancing:ModifyListenerAttributes"]
          Resource  = "*" # resources the controller created; the tag condition keeps it to this cluster's
          Condition = { StringEquals = { "aws:ResourceTag/elbv2.k8s.aws/cluster" = local.name } }
        },
        {
          Sid    = "ListenersRulesAndTargets"
          Effect = "Allow"
          Action = ["elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener", "elasticloadbalancing:ModifyListener",
            "elasticloadbalancing:CreateRule", "elasticloadbalancing:DeleteRule", "elasticloadbalancing:ModifyRule",
            "elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets",
            "elasticloadbalancing:AddListenerCertificates", "elasticloadbalancing:RemoveListenerCertificates",
          "wafv2:AssociateWebACL", "wafv2:DisassociateWebACL"]
          Resource = [
            "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account}:loadbalancer/*",
            "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account}:listener/*",
            "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account}:listener-rule/*",
            "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account}:targetgroup/*",
            "arn:${local.partition}:wafv2:${local.region}:${local.account}:regional/webacl/radstream-gateway-${var.environment_name}/*",
          ]
        },
      ]
    }
    cluster_autoscaler = {
      description = "IRSA role of the Cluster Autoscaler (kube-system/cluster-autoscaler)"
      policy_name = "scale-this-clusters-node-groups"
      statements = [
        {
          Sid    = "ReadGroupsAndInstanceTypes"
          Effect = "Allow"
          Action = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLaunchConfigurations",
            "autoscaling:DescribeScalingActivities", "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
          "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements"]
          Resource = "*" # read-only calls that take no resource ARNs
        },
        {
          Sid      = "ReadThisClustersNodeGroups"
          Effect   = "Allow"
          Action   = "eks:DescribeNodegroup"
          Resource = "arn:${local.partition}:eks:${local.region}:${local.account}:nodegroup/${local.name}/*"
        },
        {
          Sid       = "ScaleThisClustersGroups"
          Effect    = "Allow"
          Action    = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
          Resource  = "*" # managed node groups' ASGs have generated names; the tag condition picks this cluster's
          Condition = { StringEquals = { "aws:ResourceTag/eks:cluster-name" = local.name } }
        },
      ]
    }
  }
}

resource "aws_iam_role" "controller_role" {
  for_each           = local.controller_roles
  description        = each.value.description
  assume_role_policy = local.irsa_trust[each.key]
}

resource "aws_iam_role_policy" "controller_role" {
  #checkov:skip=CKV_AWS_355:Describe*/List* and creation calls take no resource ARN; the load balancer controller's writes are conditioned on this cluster's elbv2.k8s.aws/cluster tag and the autoscaler's scaling on its eks:cluster-name tag (as in infra/platform.yaml)
  #checkov:skip=CKV_AWS_290:Writes on "*" are conditioned on aws:RequestTag or aws:ResourceTag elbv2.k8s.aws/cluster (load balancers) or aws:ResourceTag/eks:cluster-name (SetDesiredCapacity, TerminateInstanceInAutoScalingGroup) = this cluster
  for_each = local.controller_roles
  name     = each.value.policy_name
  role     = aws_iam_role.controller_role[each.key].id
  policy   = jsonencode({ Version = "2012-10-17", Statement = each.value.statements })
}

# The two node groups (cpu_node_group and gpu_node_group in infra/platform.yaml) and their launch templates: IMDSv2
# only, an encrypted gp3 root volume, cost tags on the instances and volumes.
locals {
  node_groups = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = ["t3.medium"]
      volume_size    = 30
      min_size       = var.cpu_nodes
      max_size       = 4
      labels         = { "radstream.io/node-role" = "system" }
      taints         = []
    }
    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = ["g4dn.xlarge"]
      volume_size    = 100 # the Triton image is about 15 GB compressed; TensorRT engines and the S3 copy go to /tmp
      min_size       = var.gpu_nodes_min
      max_size       = var.gpu_nodes_max
      labels         = { "nvidia.com/gpu.present" = "true", "radstream.io/node-role" = "inference" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  }
}

resource "aws_launch_template" "node_launch_template" {
  for_each = local.node_groups
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = each.value.volume_size
      volume_type = "gp3"
      encrypted   = true
    }
  }
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.cost_tags, { Name = "${local.name}-${each.key}" })
  }
  tag_specifications {
    resource_type = "volume"
    tags          = local.cost_tags
  }
}

resource "aws_eks_node_group" "node_group" {
  for_each        = local.node_groups
  cluster_name    = aws_eks_cluster.cluster.name
  node_group_name = each.key
  node_role_arn   = aws_iam_role.node_role.arn
  ami_type        = each.value.ami_type
  instance_types  = each.value.instance_types
  subnet_ids      = local.private_subnet_ids
  scaling_config {
    min_size     = each.value.min_size
    desired_size = each.value.min_size
    max_size     = each.value.max_size
  }
  update_config {
    max_unavailable = 1
  }
  launch_template {
    id      = aws_launch_template.node_launch_template[each.key].id
    version = aws_launch_template.node_launch_template[each.key].latest_version
  }
  labels = each.value.labels
  dynamic "taint" {
    for_each = each.value.taints
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }
  tags       = local.node_tags
  depends_on = [aws_eks_addon.vpc_cni_addon]
}

resource "aws_eks_addon" "vpc_cni_addon" {
  cluster_name                = aws_eks_cluster.cluster.name
  addon_name                  = "vpc-cni"
  service_account_role_arn    = aws_iam_role.vpc_cni_role.arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  configuration_values        = jsonencode({ enableNetworkPolicy = "true" })
}

resource "aws_eks_addon" "kube_proxy_addon" {
  cluster_name                = aws_eks_cluster.cluster.name
  addon_name                  = "kube-proxy"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
}

# The add-ons that run as pods (CoreDnsAddon and MetricsServerAddon in infra/platform.yaml): they wait for the CPU nodes.
locals {
  pod_addons = ["coredns", "metrics-server"]
}

resource "aws_eks_addon" "pod_addon" {
  for_each                    = toset(local.pod_addons)
  cluster_name                = aws_eks_cluster.cluster.name
  addon_name                  = each.key
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  depends_on                  = [aws_eks_node_group.node_group["cpu"]]
}
