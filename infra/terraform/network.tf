# The VPC (or an existing one): private subnets in two AZs for the cluster, nodes, pods, the inference Lambda and the
# endpoints; public subnets for a NAT gateway or an internet-facing load balancer (no nodes); no default route from
# the private subnets unless enable_nat_gateway; rejected flows logged.
resource "aws_vpc" "vpc" {
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true # interface endpoints answer on the services' own names (private DNS)
  enable_dns_hostnames = true
  tags                 = { Name = local.name }
}

# Terraform only: the VPC's default security group, which CloudFormation cannot manage, admits nothing.
resource "aws_default_security_group" "default" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id
}

resource "aws_cloudwatch_log_group" "vpc_flow_log_group" {
  #checkov:skip=CKV_AWS_338:Retention is the environment's choice (log_retention_days, a year in prod as in samconfig.toml); rejected flows older than that serve no investigation here
  count             = local.create_vpc ? 1 : 0
  name              = "/radstream/${var.environment_name}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform_key.arn
}

resource "aws_iam_role" "vpc_flow_log_role" {
  count = local.create_vpc ? 1 : 0
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account } }
    }]
  })
}

resource "aws_iam_role_policy" "vpc_flow_log_role" {
  count = local.create_vpc ? 1 : 0
  name  = "write-flow-logs"
  role  = aws_iam_role.vpc_flow_log_role[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "WriteTheFlowLogGroup"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = aws_cloudwatch_log_group.vpc_flow_log_group[0].arn
    }]
  })
}

resource "aws_flow_log" "vpc_flow_log" {
  count                = local.create_vpc ? 1 : 0
  vpc_id               = aws_vpc.vpc[0].id
  traffic_type         = "REJECT" # rejected flows are the signal; ACCEPT of every pull and query would cost more than it tells
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.vpc_flow_log_group[0].arn
  iam_role_arn         = aws_iam_role.vpc_flow_log_role[0].arn
}

resource "aws_internet_gateway" "internet_gateway" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id # the attachment (InternetGatewayAttachment in CloudFormation)
}

# The four subnets (named as in infra/platform.yaml, Name tags radstream-<env>-public-a, ...): their AZ, /20 and tier.
locals {
  subnets = {
    public_subnet_a  = { az = 0, netnum = 2, tier = "public" }
    public_subnet_b  = { az = 1, netnum = 3, tier = "public" }
    private_subnet_a = { az = 0, netnum = 0, tier = "private" }
    private_subnet_b = { az = 1, netnum = 1, tier = "private" }
  }
  # Where the AWS Load Balancer Controller puts an internet-facing and an internal load balancer.
  load_balancer_role = { public = "kubernetes.io/role/elb", private = "kubernetes.io/role/internal-elb" }
}

resource "aws_subnet" "subnet" {
  for_each                = { for name, subnet in local.subnets : name => subnet if local.create_vpc }
  vpc_id                  = aws_vpc.vpc[0].id
  availability_zone       = data.aws_availability_zones.available.names[each.value.az]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, each.value.netnum)
  map_public_ip_on_launch = false # the provider's default for the private ones too
  tags                    = { Name = "${local.name}-${replace(each.key, "_subnet_", "-")}", (local.load_balancer_role[each.value.tier]) = "1" }
}

# public_route_table (default route to the internet gateway) and private_route_table (to the NAT gateway, if any).
resource "aws_route_table" "route_table" {
  for_each = toset([for tier in ["public", "private"] : tier if local.create_vpc])
  vpc_id   = aws_vpc.vpc[0].id
}

resource "aws_route" "public_default_route" {
  count                  = local.create_vpc ? 1 : 0
  route_table_id         = aws_route_table.route_table["public"].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.internet_gateway[0].id
}

# Each subnet in its tier's route table (public_subnet_a_route_table, ... in infra/platform.yaml).
resource "aws_route_table_association" "subnet_route_table" {
  for_each       = aws_subnet.subnet
  subnet_id      = each.value.id
  route_table_id = aws_route_table.route_table[local.subnets[each.key].tier].id
}

resource "aws_eip" "nat_address" {
  count      = local.create_nat ? 1 : 0
  domain     = "vpc"
  depends_on = [aws_internet_gateway.internet_gateway]
}

resource "aws_nat_gateway" "nat_gateway" {
  count         = local.create_nat ? 1 : 0
  allocation_id = aws_eip.nat_address[0].id
  subnet_id     = aws_subnet.subnet["public_subnet_a"].id
}

resource "aws_route" "private_default_route" {
  count                  = local.create_nat ? 1 : 0
  route_table_id         = aws_route_table.route_table["private"].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.nat_gateway[0].id
}

resource "aws_kms_key" "platform_key" {
  description             = "RadStream ${var.environment_name} platform key (EKS secrets, control-plane and flow logs)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersTheKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*" # in a key policy "*" means this key
      },
      {
        Sid       = "CloudWatchLogsEncryptsThisAccountsLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*" # in a key policy "*" means this key
        Condition = { ArnLike = { "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:*" } }
      },
    ]
  })
}

resource "aws_kms_alias" "platform_key_alias" {
  name          = "alias/${local.name}-platform"
  target_key_id = aws_kms_key.platform_key.key_id
}
